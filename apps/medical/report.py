"""Radiology report: structured template, fact check against findings.json, and the release policy.

Policy (``make_report``): ask the ``medical`` adapter for a report; the adapter writes the wording and
puts *slots* where a measured value goes (``[n]`` the count, ``[d2]`` nodule 2's diameter, ``[l2]`` its
side and zone, ``[i2]`` its image number, ``[history]``); :func:`fill_slots` copies those values from
findings.json. Numbers the model writes itself are kept as written. Then check every number, size,
count, nodule reference, location and type in the filled text against the findings; if the check fails,
regenerate once
(sampling, different seed) while the time budget allows; if it still fails or the server is down,
release the structured template instead. The check result and every attempt are recorded.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field

NUMBER_WORDS = {"no": 0, "zero": 0, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_NUM = r"-?\d+(?:\.\d+)?"
_SLOT = re.compile(r"\[(n|history|[dvhil]\d+)\]")
_ANY_SLOT = re.compile(r"\[[a-z]+\d*\]?")  # also a slot cut short ("image [i1" at the token cap)
_TYPE = re.compile(r"\b(part-solid|ground glass|solid)\b")
_LOCATION = re.compile(r"\b(right|left)\s+(upper|middle|lower)\b")
_SIZE = re.compile(rf"({_NUM})\s*(mm|cm)\b(?!\s*(?:3|\^3|³))")  # a length, not a volume (mm3)


def _mm(m: re.Match) -> float:
    """The length a size match (number, unit) states, in mm."""
    return float(m.group(1)) * (10 if m.group(2) == "cm" else 1)


@dataclass(frozen=True)
class ReportConfig:
    time_budget_s: float = 3.2
    max_tokens: int = 220
    max_attempts: int = 2


@dataclass
class Verification:
    ok: bool
    problems: list[str] = field(default_factory=list)
    numbers_checked: int = 0


def finding_line(f: dict) -> str:
    return (f"Nodule {f['id']}: {f['type']}, {f['longest_diameter_mm']:.1f} mm longest diameter, "
            f"volume {f['volume_mm3']:.1f} mm3, mean {f['mean_hu']:.0f} HU, {f['side']} {f['zone']} zone, "
            f"image {f['image_number']}.")


def template_report(findings: list[dict], history: str | None) -> str:
    lines = ["CT CHEST - AUTOMATED LUNG NODULE ANALYSIS"]
    if history:
        lines.append(f"Clinical history: {history.strip()}")
    if not findings:
        lines += ["Findings: no pulmonary nodules detected.", "Impression: no pulmonary nodules detected."]
        return "\n".join(lines)
    n = len(findings)
    lines.append(f"Findings: {n} pulmonary nodule{'s' if n > 1 else ''} detected.")
    lines += [finding_line(f) for f in findings]
    largest = max(findings, key=lambda f: f["longest_diameter_mm"])
    lines.append(f"Impression: {n} pulmonary nodule{'s' if n > 1 else ''}; largest {largest['longest_diameter_mm']:.1f} mm "
                 f"({largest['type']}, {largest['side']} {largest['zone']} zone).")
    return "\n".join(lines)


REPORT_HEADER = "CT CHEST - AUTOMATED LUNG NODULE ANALYSIS"


def summary_piece(findings: list[dict]) -> str:
    """The summary as the adapter is trained to write it: count sentence and impression, with slots."""
    n = len(findings)
    if not n:
        return "Findings: no pulmonary nodules.\nImpression: no pulmonary nodules."
    plural = "s" if n > 1 else ""
    big = max(findings, key=lambda f: f["longest_diameter_mm"])
    return (f"Findings: [n] pulmonary nodule{plural}.\n"
            f"Impression: [n] pulmonary nodule{plural}, largest [d{big['id']}] mm ({big['type']}, [l{big['id']}]).")


def nodule_piece(f: dict) -> str:
    """One nodule's statement as the adapter is trained to write it."""
    return f"Nodule {f['id']}: {f['type']}, [d{f['id']}] mm, [l{f['id']}], image [i{f['id']}]."


def assemble_report(summary: str, nodule_lines: list[str], history: str | None) -> str:
    """Header and history line (fixed), the summary's first line, the nodule lines, the rest of the summary."""
    head = [REPORT_HEADER] + (["Clinical history: [history]"] if history else [])
    first, _, rest = summary.strip().partition("\n")
    return "\n".join(head + [first] + [line.strip() for line in nodule_lines] + ([rest.strip()] if rest.strip() else []))


def slot_report(findings: list[dict], history: str | None) -> str:
    """The whole report as the trained adapter writes it (before the slots are filled)."""
    return assemble_report(summary_piece(findings), [nodule_piece(f) for f in findings], history)


def fill_slots(text: str, findings: list[dict], history: str | None) -> str:
    """Copy values from the findings into the slots; a slot naming no such nodule is left as written
    (verification then fails on it)."""
    by_id = {int(f["id"]): f for f in findings}

    def value(m: re.Match) -> str:
        key = m.group(1)
        if key == "n":
            return str(len(findings))
        if key == "history":
            return history.strip() if history else m.group(0)
        f = by_id.get(int(key[1:]))
        if f is None:
            return m.group(0)
        return {"d": f"{float(f['longest_diameter_mm']):.1f}", "v": f"{float(f['volume_mm3']):.1f}",
                "h": f"{float(f['mean_hu']):.0f}", "i": str(f["image_number"]), "l": f"{f['side']} {f['zone']}"}[key[0]]

    return _SLOT.sub(value, text)


def _check_nodule_statements(body_l: str, findings: list[dict]) -> list[str]:
    """In "Nodule k ..." up to the end of its line (or the next nodule reference), every size,
    location and type must be nodule k's own, not merely some nodule's."""
    problems = []
    by_id = {int(f["id"]): f for f in findings}
    refs = list(re.finditer(r"nodule\s+#?(\d+)", body_l))
    for idx, m in enumerate(refs):
        f = by_id.get(int(m.group(1)))
        if f is None:
            continue  # reported by the reference check
        end = body_l.find("\n", m.end())
        end = len(body_l) if end < 0 else end
        if idx + 1 < len(refs):
            end = min(end, refs[idx + 1].start())
        seg = body_l[m.end():end]
        for s in _SIZE.finditer(seg):
            if abs(_mm(s) - float(f["longest_diameter_mm"])) > 0.15:
                problems.append(f"nodule {f['id']}: size {s.group(0)!r} is not its diameter {f['longest_diameter_mm']}")
        problems += _not_its(seg, f, f"nodule {f['id']}")
    return problems


def _not_its(text: str, f: dict, who: str) -> list[str]:
    """Every location and type word in ``text`` must be nodule ``f``'s own."""
    problems = [f"{who}: location {s.group(0)!r} is not its {f['side']} {f['zone']}"
                for s in _LOCATION.finditer(text) if (s.group(1), s.group(2)) != (f["side"], f["zone"])]
    return problems + [f"{who}: type {s.group(1)!r} is not its {f['type']}"
                       for s in _TYPE.finditer(text) if s.group(1) != str(f["type"]).replace("_", " ")]


def _check_largest(body_l: str, findings: list[dict]) -> list[str]:
    """"largest <size> mm (<type>, <side> <zone>)" must be the largest nodule's size, type and location:
    each is some nodule's, which the checks above accept, but the impression names one nodule."""
    if not findings:
        return []
    big = max(findings, key=lambda f: float(f["longest_diameter_mm"]))
    problems = []
    for m in re.finditer(rf"largest\s+({_NUM})\s*(mm|cm)\b(?:\s*\(([^)\n]*)\))?", body_l):
        if abs(_mm(m) - float(big["longest_diameter_mm"])) > 0.15:
            problems.append(f"largest {m.group(0)!r} is not the largest nodule ({big['longest_diameter_mm']} mm)")
        problems += _not_its(m.group(3) or "", big, "largest nodule")
    return problems


def verify_report(text: str, findings: list[dict], history: str | None = None) -> Verification:
    """Every quantitative or locating statement must be backed by the findings (or the given history)."""
    problems: list[str] = []
    n = len(findings)
    body = text
    if history:
        body = body.replace(history.strip(), " ")  # numbers the requester gave us are not ours to check
    body_l = body.lower()
    diameters = [float(f["longest_diameter_mm"]) for f in findings]
    allowed: set[float] = {float(n)}
    for f in findings:
        allowed |= {float(f["id"]), float(f["longest_diameter_mm"]), float(f["volume_mm3"]), float(f["mean_hu"]),
                    float(f["image_number"]), *map(float, f["center_mm"])}
    # Sizes: a number followed by mm/cm must be one of the nodule diameters.
    checked = 0
    size_spans = []
    sizes_stated = []
    for m in _SIZE.finditer(body_l):
        checked += 1
        size_spans.append(m.span(1))
        value = _mm(m)
        sizes_stated.append(value)
        if not any(abs(value - d) <= 0.15 for d in diameters):
            problems.append(f"size {m.group(0)!r} matches no nodule diameter")
    # Completeness: saying nothing wrong is not enough; every nodule's size must be in the report.
    for f in findings:
        if not any(abs(v - float(f["longest_diameter_mm"])) <= 0.15 for v in sizes_stated):
            problems.append(f"nodule {f['id']} ({f['longest_diameter_mm']} mm) is not reported")
    # Counts: "<n> nodules" must equal the number of findings.
    count_words = "|".join(NUMBER_WORDS)
    count_stated = False
    for m in re.finditer(rf"\b(\d+|{count_words})\s+(?:pulmonary\s+|lung\s+|small\s+)?nodules?\b", body_l):
        count_stated = True
        word = m.group(1)
        count = int(word) if word.isdigit() else NUMBER_WORDS[word]
        checked += 1
        if count != n:
            problems.append(f"count {m.group(0)!r} but {n} nodule(s) were found")
    # References: "nodule <k>" must exist.
    for m in re.finditer(r"nodule\s+#?(\d+)", body_l):
        checked += 1
        if not 1 <= int(m.group(1)) <= n:
            problems.append(f"reference {m.group(0)!r} to a nodule that does not exist")
    # Every other number must be one we produced (ids, sizes, volumes, HU, image numbers, coordinates).
    stripped = re.sub(r"mm(?:3|\^3|³)", "mm", body_l)
    for m in re.finditer(_NUM, stripped):
        if any(a <= m.start() < b for a, b in size_spans):
            continue
        checked += 1
        value = float(m.group(0))
        tol = max(0.15, abs(value) * 0.005)
        if not any(abs(value - a) <= tol for a in allowed):
            problems.append(f"number {m.group(0)!r} is not in the findings")
    # Locations: side + zone pairs must belong to some nodule.
    pairs = {(f["side"], f["zone"]) for f in findings}
    for m in _LOCATION.finditer(body_l):
        checked += 1
        if (m.group(1), m.group(2)) not in pairs:
            problems.append(f"location {m.group(0)!r} matches no nodule")
    problems += _check_nodule_statements(body_l, findings)
    problems += _check_largest(body_l, findings)
    for m in _ANY_SLOT.finditer(body_l):
        problems.append(f"slot {m.group(0)!r} names no value of the findings")
    if not count_stated:
        problems.append("the number of nodules is not stated")
    if n and re.search(r"\bno (?:pulmonary )?nodules?\b", body_l):
        problems.append("says no nodules although nodules were found")
    if n and checked == 0:
        problems.append("report states no measurement at all")
    return Verification(ok=not problems, problems=problems[:20], numbers_checked=checked)


def make_report(findings: list[dict], history: str | None, generate, cfg: ReportConfig = ReportConfig()) -> dict:
    """``generate(findings, history, attempt) -> str`` calls the LLM (raises when it is unavailable)."""
    start = time.perf_counter()
    attempts = []
    for attempt in range(cfg.max_attempts):
        elapsed = time.perf_counter() - start
        if attempt and elapsed > cfg.time_budget_s / 2:
            attempts.append({"attempt": attempt, "skipped": f"time budget: {elapsed:.2f} s of {cfg.time_budget_s} s used"})
            break
        try:
            raw = generate(findings, history, attempt)
        except Exception as exc:  # noqa: BLE001 - server down or refusing: the template still goes out, labelled
            unreachable = isinstance(exc, OSError) or type(exc).__name__ in ("ModelUnavailable", "APIConnectionError")
            attempts.append({"attempt": attempt, "error": f"{type(exc).__name__}: {str(exc)[:200]}",
                             "kind": "model server unavailable" if unreachable else "LLM request rejected"})
            break
        text = fill_slots(raw, findings, history)
        check = verify_report(text, findings, history)
        attempts.append({"attempt": attempt, "verification": asdict(check), "text": text}
                        | ({"model_text": raw} if raw != text else {}))
        if check.ok:
            return {"text": text, "source": "llm:medical", "verified": True, "verification": asdict(check),
                    "attempts": attempts, "seconds": round(time.perf_counter() - start, 3)}
    text = template_report(findings, history)
    check = verify_report(text, findings, history)
    reason = attempts[-1]["kind"] if attempts and "error" in attempts[-1] else "LLM report failed verification"
    return {"text": text, "source": "template", "verified": check.ok, "verification": asdict(check),
            "fallback_reason": reason, "attempts": attempts, "seconds": round(time.perf_counter() - start, 3)}
