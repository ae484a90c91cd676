"""Maintenance advice for a device in alert: the ``manufacturing`` LoRA adapter through the model
server, or a clearly-labelled rule template when the server cannot be reached. Also builds the
SYNTHETIC chat training data (alert context -> advice) for that adapter.
"""
from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ADAPTER = "manufacturing"
SYSTEM = ("You are a reliability engineer. From a machine's health score, its trend and the sensors "
          "deviating from normal for the current operating regime, write a short maintenance "
          "recommendation: the likely cause and the next action, in at most three sentences.")
FALLBACK_LABEL = "[template advice - model server unavailable]"
CHECK_FAILED_LABEL = "[template advice - the adapter's text failed the check]"

# What each deviating sensor usually means and what to do about it (the template's knowledge).
SENSOR_HINTS = {
    "vibration_rms": ("vibration above normal for this speed", "check balance, alignment and mounting bolts"),
    "vibration_kurtosis": ("impulsive vibration (impacts)", "inspect the bearings for wear or damage"),
    "temperature": ("running hot for this load", "check cooling, lubrication and filters"),
    "pressure": ("pressure off its normal band", "check seals, valves and the pressure line"),
    "current": ("motor current off its normal band", "check the motor, drive and mechanical load"),
    "rpm": ("speed off its set point", "check the drive and speed control"),
    "load": ("load off its set point", "check the process feeding this machine"),
}


@dataclass
class AlertContext:
    device_id: str
    health: float
    health_change: float
    """Health now minus health at the start of the look-back (negative = worsening)."""
    hours: float
    contributing: list[tuple[str, float]]
    in_alert: bool

    def prompt(self) -> str:
        sensors = ", ".join(f"{name} {z:+.1f} sigma" for name, z in self.contributing) or "none above 2 sigma"
        return (f"Device {self.device_id}: health {self.health:.0f}/100 "
                f"({self.health_change:+.0f} over the last {self.hours:.1f} h), "
                f"{'in alert' if self.in_alert else 'not in alert'}. "
                f"Deviating sensors: {sensors}. What should maintenance do?")


@dataclass
class Advice:
    text: str
    source: str


def parse_contributing(text: str) -> list[tuple[str, float]]:
    """``"temperature(+4.2);current(+2.1)"`` -> [("temperature", 4.2), ("current", 2.1)]."""
    return [(m.group(1), float(m.group(2))) for m in re.finditer(r"([\w.-]+)\(([+-]?[\d.]+)\)", text or "")]


def template_advice(ctx: AlertContext) -> str:
    """Rule-based advice from the deviating sensors (no model): the fallback, and the data generator's
    core. Stuck-low readings (a large negative z on one sensor) are read as a sensor fault."""
    if not ctx.contributing:
        return (f"Device {ctx.device_id} health {ctx.health:.0f}/100 with no single sensor clearly off: "
                f"watch the trend and inspect at the next planned stop.")
    name, z = ctx.contributing[0]
    if z < -6 and len(ctx.contributing) == 1:
        return (f"Device {ctx.device_id}: the {name} reading drops far below normal on its own, which "
                f"looks like a failing sensor or loose connector rather than a machine fault; check the "
                f"{name} sensor wiring and replace it if the dropouts continue.")
    what, action = SENSOR_HINTS.get(name, (f"{name} off its normal band", f"inspect what drives {name}"))
    others = ", ".join(n for n, _ in ctx.contributing[1:])
    trend = "falling" if ctx.health_change < -5 else "steady"
    # Names every deviating sensor, so the template passes the same check as the adapter's text.
    return (f"Device {ctx.device_id} (health {ctx.health:.0f}/100, {trend}): {name} {z:+.1f} sigma, {what}"
            f"{', together with ' + others if others else ''}. Recommended: {action}"
            f"{' within 24 h' if ctx.health < 30 else ' at the next planned stop'}.")


def sensor_phrase(contributing: list[tuple[str, float]]) -> str:
    """``[("temperature", 4.2), ("current", 2.1)]`` -> "The temperature and current readings are off
    normal for this regime"."""
    names = [name for name, _ in contributing]
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"The {joined} reading{' is' if len(names) == 1 else 's are'} off normal for this regime"


def missing_sensors(text: str, ctx: AlertContext) -> list[str]:
    """The deviating sensors of ``ctx`` that ``text`` does not name (as a whole word). Advice that
    does not say which sensors it is about cannot be checked by the engineer against the trace, so
    such text from the adapter is not shown (``advise`` falls back to the labelled template)."""
    return [name for name, _ in ctx.contributing if not re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", text)]


def advice_problems(text: str, ctx: AlertContext) -> list[str]:
    """Why the adapter's text cannot be shown (empty = it can): it must name every deviating sensor,
    and it must not be degenerate (a small model's failure modes: text that loops on itself, or
    drifts into other scripts). A name check alone is passed by looping text that happens to
    contain the name, so both are needed."""
    problems = [f"does not name {name}" for name in missing_sensors(text, ctx)]
    words = re.findall(r"\S+", text.lower())
    trigrams = list(zip(words, words[1:], words[2:]))
    if not words:
        problems.append("empty")
    elif (trigrams and len(set(trigrams)) < 0.9 * len(trigrams)) or any(
            a == b == c for a, b, c in trigrams):        # looping text, or one word three times in a row
        problems.append("repeats itself")
    if any(not (ch.isascii() and (ch.isprintable() or ch.isspace())) for ch in text):
        problems.append("non-ASCII text in an English answer")
    return problems


def advise(client, ctx: AlertContext) -> Advice:
    """Ask the ``manufacturing`` adapter. Its text is used only if it passes ``advice_problems``
    (names every deviating sensor, not degenerate); otherwise, and on any server problem, the answer
    is the rule template, labelled as such."""
    from core.client import ModelRequestError, ModelUnavailable

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ctx.prompt()}]
    try:
        text = client.chat(model=ADAPTER, messages=messages, max_tokens=120, temperature=0.0).strip()
        problems = advice_problems(text, ctx)
        if text and not problems:
            return Advice(text, f"model:{ADAPTER}")
        if text:
            log.warning("advice for %s from the template: the adapter's text %s: %r",
                        ctx.device_id, "; ".join(problems), text[:200])
            return Advice(f"{CHECK_FAILED_LABEL} {template_advice(ctx)}", "fallback-check")
        reason = "empty answer"
    except ModelUnavailable as exc:
        reason = f"unavailable ({exc})"
    except ModelRequestError as exc:  # e.g. the adapter is not trained yet
        reason = f"refused ({exc})"
    log.warning("advice for %s from the template: model server %s", ctx.device_id, reason)
    return Advice(f"{FALLBACK_LABEL} {template_advice(ctx)}", "fallback-template")


def check_advice(client, records_path: str | Path, limit: int | None = None) -> dict:
    """How often the adapter's own text passes the sensor check, over chat records written by
    ``build_advice_dataset`` (the user turn is the run-time prompt; its deviating sensors are parsed
    back from it). Returns counts, the pass rate, why texts failed, and a few examples of each."""
    from shared.io import read_jsonl

    sources: dict[str, int] = {}
    failures, passes = [], []
    reasons: dict[str, int] = {}
    n = 0
    for rec in read_jsonl(records_path):
        if limit is not None and n >= limit:
            break
        user = next(m["content"] for m in rec["messages"] if m["role"] == "user")
        m = re.match(r"Device (\S+): health (\d+)/100 \(([+-]\d+) over the last ([\d.]+) h\)", user)
        listed = user.split("Deviating sensors: ", 1)[1].split(". What should", 1)[0]
        contributing = [(name, float(z)) for name, z in re.findall(r"([\w.-]+) ([+-][\d.]+) sigma", listed)]
        ctx = AlertContext(m.group(1), float(m.group(2)), float(m.group(3)), float(m.group(4)), contributing, True)
        advice = advise(client, ctx)
        sources[advice.source] = sources.get(advice.source, 0) + 1
        if advice.source == "fallback-check":
            # The same check on the adapter's raw text, to count the reasons.
            raw = client.chat(model=ADAPTER, messages=[{"role": "system", "content": SYSTEM},
                                                       {"role": "user", "content": user}],
                              max_tokens=120, temperature=0.0).strip()
            for problem in advice_problems(raw, ctx):
                key = "does not name a deviating sensor" if problem.startswith("does not name") else problem
                reasons[key] = reasons.get(key, 0) + 1
        kept = passes if advice.source == f"model:{ADAPTER}" else failures
        if len(kept) < 5:
            kept.append({"prompt": user, "advice": advice.text})
        n += 1
    passed = sources.get(f"model:{ADAPTER}", 0)
    return {"records": n, "sources": sources, "adapter_text_passed": passed,
            "pass_rate": round(passed / max(n, 1), 4), "failed_because": reasons,
            "examples_passed": passes, "examples_not_passed": failures}


def context_from_history(db: str | Path, device_id: str, lookback: int = 8) -> AlertContext:
    """The device's last ``lookback`` scored windows from the scheduler's SQLite history."""
    from shared.io import InputError

    if not Path(db).exists():
        raise InputError(f"{db}: no scoring history yet (run `dsv manufacturing run` or `service`)")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT ts, health, alert, contributing_sensors FROM scores WHERE device_id = ? "
                            "ORDER BY ts DESC LIMIT ?", (device_id, lookback)).fetchall()
    if not rows:
        raise InputError(f"{db}: device '{device_id}' has no scores")
    rows = rows[::-1]
    return AlertContext(device_id=device_id, health=rows[-1][1], health_change=rows[-1][1] - rows[0][1],
                        hours=(rows[-1][0] - rows[0][0]) / 3600.0,
                        contributing=parse_contributing(rows[-1][3]), in_alert=bool(rows[-1][2]))


def advice_for_device(settings, db: str | Path, device_id: str) -> Advice:
    from core.client import ModelClient

    return advise(ModelClient.from_settings(settings), context_from_history(db, device_id))


# ------------------------------------------------------------------ adapter training data
FAULT_ADVICE = {
    "bearing_wear": "Vibration and its kurtosis rising together, with temperature creeping up, point to "
                    "bearing wear. Plan a bearing inspection within 48 h and have a replacement ready.",
    "imbalance": "Vibration rising with speed while kurtosis stays normal points to imbalance or "
                 "misalignment. Check rotor balance, coupling alignment and mounting at the next stop.",
    "overheating": "Temperature running far above normal for this load, with current up, points to "
                   "overheating. Check cooling, lubrication and filters now and reduce load until fixed.",
    "sensor_drift": "Only the {sensor} reading is drifting while related sensors stay normal: the "
                    "measurement, not the machine, is likely at fault. Verify {sensor} against a handheld "
                    "reading and recalibrate the sensor.",
    "sensor_dropout": "The {sensor} reading keeps dropping to zero: a failing sensor or loose connector. "
                      "Check the {sensor} sensor wiring and replace the sensor if dropouts continue.",
}


def build_advice_dataset(out: str | Path, devices: int = 300, seed: int = 7, days: float = 7.0) -> int:
    """SYNTHETIC chat records for the adapter: the prompt is built exactly as at run time from a
    simulated machine late in its fault (deviating sensors from per-regime z-scores), the answer
    states the simulated fault's cause and action. Written atomically as JSONL."""
    from shared.io import write_jsonl_atomic

    from .data import REGIME_SENSORS, SENSORS
    from .scoring import contributing_sensors
    from .simulate import SimConfig, simulate_fleet
    from .windows import RegimeNormalizer, sliding_windows

    fleet = simulate_fleet(SimConfig(devices=devices, days=days, seed=seed, fault_fraction=0.8))
    rng = np.random.default_rng(seed)
    win, ends = sliding_windows(fleet.values, 24, 3)
    end_ts = fleet.ts[ends]
    lab = fleet.labels
    onset, failure = lab["onset_ts"].to_numpy(), lab["failure_ts"].to_numpy()
    healthy = (onset[:, None] < 0) | (end_ts[None, :] < onset[:, None])
    norm = RegimeNormalizer(SENSORS, REGIME_SENSORS).fit(win[healthy][::7].reshape(-1, len(SENSORS)))
    records = []
    for i in np.flatnonzero(onset >= 0):
        late = np.flatnonzero((end_ts >= onset[i] + 0.6 * (failure[i] - onset[i])) & (end_ts < failure[i]))
        if len(late) < 2:
            continue
        j = int(rng.choice(late))
        z = norm.transform(win[i, j][None])
        contrib = parse_contributing(contributing_sensors(z, SENSORS)[0])
        progress = (end_ts[j] - onset[i]) / (failure[i] - onset[i])
        health = float(np.clip(60 - 60 * progress + rng.normal(0, 5), 2, 49))
        ctx = AlertContext(str(lab.device_id[i]), health, -float(rng.uniform(10, 50)), 2.0, contrib, True)
        # The answer names the deviating sensors first (as the prompt spells them), then the cause
        # and the action, so the adapter learns to say what its advice is about (``advice_problems``).
        advice = FAULT_ADVICE[lab.fault[i]].format(sensor=lab.fault_sensor[i] or "affected")
        answer = f"{sensor_phrase(contrib)}. {advice}" if contrib else advice
        records.append({"messages": [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": ctx.prompt()},
                                     {"role": "assistant", "content": answer}]})
    return write_jsonl_atomic(out, records)
