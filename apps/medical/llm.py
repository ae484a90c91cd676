"""Prompting the DeepSeek ``medical`` LoRA adapter through the model server, and its training data.

The prompt carries only de-identified facts: the findings (pseudonymised series id, measurements)
and the redacted clinical history. The same prompt format is used to build the fine-tuning records
(synthetic findings -> report with value slots, ``report.slot_report``): the adapter learns the wording,
the per-nodule statements, types and locations, and puts a slot (``[d2]``) wherever a measured value
goes; ``report.fill_slots`` copies the value from findings.json and the filled text is verified. A
7.5 M-parameter model does not copy multi-digit numbers reliably (docs/model.md); slots make the numbers
exact by construction, and the check still catches a slot on the wrong nodule or a missing one.
"""
from __future__ import annotations

from pathlib import Path

# Short on purpose: every prompt token is paid for in fine-tuning and in the 3.2 s report budget.
SYSTEM_PROMPT = "Write a CT chest report from the automated nodule findings. Measured values go in slots."


def user_prompt(findings: list[dict], history: str | None) -> str:
    # One compact line per nodule: the prompt must fit small context windows with many findings.
    # The adapter writes slots for measured values, so only what it words itself is given: the nodules'
    # order (largest first), type and location, plus the diameter for context.
    lines = [f"{f['id']}: {f['type']}, {f['longest_diameter_mm']} mm, {f['side']} {f['zone']}" for f in findings]
    return (f"Clinical history: {history.strip() if history else 'not given'}\n"
            f"Nodules found: {len(findings)}\n" + "".join(line + "\n" for line in lines) + "Write the report.")


def messages_for(findings: list[dict], history: str | None) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user_prompt(findings, history)}]


class AdapterReporter:
    """``generate(findings, history, attempt)`` for :func:`report.make_report`, via ``ModelClient``."""

    def __init__(self, client, model: str = "medical", max_tokens: int = 220):
        self.client, self.model, self.max_tokens = client, model, max_tokens

    @classmethod
    def from_settings(cls, settings, timeout: float = 10.0) -> AdapterReporter | None:
        try:
            from core.client import ModelClient
        except ImportError:
            return None
        # No client-side retries: the report has a 3.2 s budget and its own regenerate/fallback policy.
        return cls(ModelClient(settings.server_url, api_key=settings.api_key, timeout=timeout, max_retries=0))

    def __call__(self, findings: list[dict], history: str | None, attempt: int) -> str:
        # First attempt greedy; a regeneration samples with another seed.
        # A slotted report needs ~40 tokens of frame and ~20 per nodule: asking for more only burns
        # the 3.2 s budget when a model does not stop by itself.
        max_tokens = min(self.max_tokens, 48 + 24 * len(findings))
        return self.client.chat(self.model, messages_for(findings, history), max_tokens=max_tokens,
                                temperature=0.0 if attempt == 0 else 0.7, seed=attempt)


def write_finetune_data(out: Path, n_cases: int, seed: int) -> int:
    """Chat records (synthetic findings -> slotted report) for ``dsv finetune`` (``finetune.yaml``)."""
    import numpy as np

    from shared.io import write_jsonl_atomic

    from .calibration import NoduleSizeModel
    from .report import slot_report

    rng = np.random.default_rng(seed)
    sizes = NoduleSizeModel.load()
    histories = [None, "Smoker, 30 pack-years.", "Follow-up of incidental nodule.", "Cough for 3 weeks.",
                 "Screening CT.", "Weight loss."]
    records = []
    for _ in range(n_cases):
        findings = []
        for i in range(int(rng.integers(0, 5))):
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
        history = histories[int(rng.integers(len(histories)))]
        records.append({"messages": messages_for(findings, history)
                        + [{"role": "assistant", "content": slot_report(findings, history)}]})
    return write_jsonl_atomic(out, records)
