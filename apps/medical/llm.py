"""Prompting the DeepSeek ``medical`` LoRA adapter through the model server, and its training data.

The prompts carry only de-identified facts: the findings (measurements, type, location) and the
redacted clinical history. A report is written as several short requests sent **at once**, which the
server decodes in one batch: one for the summary (the "Findings:" count sentence and the impression)
and one per nodule (its statement). Latency is then that of the longest piece (~35 tokens), not of the
whole report (~40 + 25 per nodule tokens one after another), and each piece is a short, well-posed
task for a 7.5 M-parameter model. The app puts the pieces in order under a fixed header
(``report.assemble_report``).

The adapter writes the wording and types, and a *slot* (``[d2]``, ``[l2]``, ``[n]`` ...) wherever a
measured value or a location goes; ``report.fill_slots`` copies the value from findings.json and the
filled text is verified. A 7.5 M-parameter model does not copy multi-digit numbers reliably
(docs/model.md), nor, in session 2's reports, side and zone words (one wrong word in any nodule line
failed the report); slots make both exact by construction, and the check still catches a slot on the
wrong nodule, a wrong type, or a missing statement. The fine-tuning records use the same prompts.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Short on purpose: every prompt token is paid for in fine-tuning and in the 3.2 s report budget.
SUMMARY_SYSTEM = "Write the findings and impression lines of a CT chest report. Measured values go in slots."
NODULE_SYSTEM = "Write one nodule line of a CT chest report. Measured values go in slots."


def nodule_fact(f: dict) -> str:
    return f"{f['id']}: {f['type']}, {f['longest_diameter_mm']} mm, {f['side']} {f['zone']}"


def summary_messages(findings: list[dict]) -> list[dict]:
    # Findings come largest first, so nodule 1 is the one the impression names.
    user = f"Nodules found: {len(findings)}" + (f"\nLargest: {nodule_fact(findings[0])}" if findings else "")
    return [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": user}]


def nodule_messages(f: dict) -> list[dict]:
    return [{"role": "system", "content": NODULE_SYSTEM}, {"role": "user", "content": f"Nodule {nodule_fact(f)}"}]


def training_pieces(findings: list[dict]) -> list[list[dict]]:
    """Chat records for one findings list: the summary, then one per nodule (targets from report.py)."""
    from .report import nodule_piece, summary_piece

    return ([summary_messages(findings) + [{"role": "assistant", "content": summary_piece(findings)}]]
            + [nodule_messages(f) + [{"role": "assistant", "content": nodule_piece(f)}] for f in findings])


class AdapterReporter:
    """``generate(findings, history, attempt)`` for :func:`report.make_report`, via ``ModelClient``."""

    # The caps sit a little above the longest training target in deepseek-tiny's tokens (summary 51,
    # nodule line 30 with "part-solid" and three slots): a lower cap cut slots short ("image [i1").
    def __init__(self, client, model: str = "medical", summary_tokens: int = 56, nodule_tokens: int = 34,
                 max_parallel: int = 32):
        self.client, self.model = client, model
        self.summary_tokens, self.nodule_tokens, self.max_parallel = summary_tokens, nodule_tokens, max_parallel

    @classmethod
    def from_settings(cls, settings, timeout: float = 10.0) -> AdapterReporter | None:
        try:
            from core.client import ModelClient
        except ImportError:
            return None
        # No client-side retries: the report has a 3.2 s budget and its own regenerate/fallback policy.
        return cls(ModelClient(settings.server_url, api_key=settings.api_key, timeout=timeout, max_retries=0))

    def __call__(self, findings: list[dict], history: str | None, attempt: int) -> str:
        from .report import assemble_report

        # First attempt greedy; a regeneration samples with another seed. Pieces go out together so
        # that the server batches them.
        requests = [(summary_messages(findings), self.summary_tokens)] + [(nodule_messages(f), self.nodule_tokens) for f in findings]
        temperature = 0.0 if attempt == 0 else 0.7

        def ask(req: tuple[list[dict], int]) -> str:
            return self.client.chat(self.model, req[0], max_tokens=req[1], temperature=temperature, seed=attempt)

        with ThreadPoolExecutor(max_workers=min(self.max_parallel, len(requests))) as pool:
            pieces = list(pool.map(ask, requests))
        return assemble_report(pieces[0], pieces[1:], history)


def write_finetune_data(out: Path, n_cases: int, seed: int, max_nodules: int = 8) -> int:
    """Chat records (synthetic findings -> slotted summary and nodule lines) for ``dsv finetune``
    (``finetune.yaml``): per case one summary record, then one record per nodule, in that order.

    Cases hold 0 to ``max_nodules`` nodules. A tiny model copies only the nodule numbers it has seen:
    trained on at most 4 a case, it wrote "Nodule 3" for a fifth nodule, and a scan can report more
    (true nodules plus the false positives at the operating point)."""
    import numpy as np

    from shared.io import write_jsonl_atomic

    from .calibration import NoduleSizeModel

    rng = np.random.default_rng(seed)
    sizes = NoduleSizeModel.load()
    records = []
    for _ in range(n_cases):
        findings = []
        for i in range(int(rng.integers(0, max_nodules + 1))):
            d = round(sizes.sample_diameter(rng), 1)
            kind = {"solid": "solid", "part_solid": "part-solid", "ground_glass": "ground glass"}[sizes.sample_type(rng)]
            findings.append({"id": i + 1, "type": kind, "longest_diameter_mm": d,
                             "volume_mm3": round(float(np.pi / 6 * d ** 3 * rng.uniform(0.6, 0.9)), 1),
                             "mean_hu": float(round(rng.uniform(-40, 60) if kind == "solid" else rng.uniform(-650, -250))),
                             "side": str(rng.choice(["right", "left"])), "zone": str(rng.choice(["upper", "middle", "lower"])),
                             "image_number": int(rng.integers(1, 120))})
        findings.sort(key=lambda f: -f["longest_diameter_mm"])
        for i, f in enumerate(findings, start=1):
            f["id"] = i
        records += [{"messages": m} for m in training_pieces(findings)]
    return write_jsonl_atomic(out, records)
