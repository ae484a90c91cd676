"""A small SYNTHETIC bilingual domain chat set for tests, demos and benchmarks (never real data).

Template-generated question/answer pairs over the four verticals, in English and Chinese, whose answers
follow learnable rules (e.g. a large amount -> high risk), so that "loss falls" and "BLEU rises" are
observable after a few hundred LoRA steps on a tiny model. Deterministic under ``seed``.
"""
from __future__ import annotations

import random
from pathlib import Path

from core.finetune.data import write_chat_jsonl

SYSTEM = "You are a domain assistant."

_MERCHANTS = ["grocery store", "electronics shop", "online casino", "airline", "pharmacy"]
_ORGANS = [("right upper lobe", "右肺上叶"), ("left lower lobe", "左肺下叶"), ("right middle lobe", "右肺中叶")]
_MACHINES = [("pump", "泵"), ("bearing", "轴承"), ("motor", "电机")]


def _finance(rng: random.Random) -> tuple[str, str]:
    amount = rng.choice([20, 45, 80, 120, 900, 2500, 7000, 9800])
    merchant = rng.choice(_MERCHANTS)
    high = amount >= 2500 or merchant == "online casino"
    if rng.random() < 0.5:
        q = f"A payment of {amount} USD at an {merchant}. Is it suspicious?"
        a = ("High risk: the amount or merchant is unusual for this account." if high
             else "Low risk: the payment matches normal spending.")
    else:
        q = f"一笔{amount}美元的交易，商户为{merchant}。是否可疑？"
        a = "高风险：金额或商户与账户习惯不符。" if high else "低风险：交易符合日常消费。"
    return q, a


def _medical(rng: random.Random) -> tuple[str, str]:
    size = rng.choice([3, 5, 7, 9, 12, 18])
    lobe_en, lobe_zh = rng.choice(_ORGANS)
    follow = size >= 8
    if rng.random() < 0.5:
        q = f"CT shows a {size} mm nodule in the {lobe_en}. Recommendation?"
        a = ("Suspicious nodule: refer for PET-CT and biopsy." if follow
             else "Small nodule: follow-up CT in twelve months.")
    else:
        q = f"CT示{lobe_zh}{size}毫米结节。建议？"
        a = "可疑结节：建议PET-CT及活检。" if follow else "小结节：建议十二个月后复查CT。"
    return q, a


def _manufacturing(rng: random.Random) -> tuple[str, str]:
    rms = rng.choice([0.8, 1.1, 1.5, 2.9, 4.2, 6.3])
    machine_en, machine_zh = rng.choice(_MACHINES)
    bad = rms >= 2.5
    if rng.random() < 0.5:
        q = f"The {machine_en} vibration RMS is {rms} mm/s. Health?"
        a = ("Degraded: schedule maintenance this week." if bad else "Healthy: no action needed.")
    else:
        q = f"{machine_zh}振动有效值为{rms}毫米每秒。健康状况？"
        a = "劣化：本周安排检修。" if bad else "健康：无需处理。"
    return q, a


def _legal(rng: random.Random) -> tuple[str, str]:
    days = rng.choice([10, 30, 60, 90, 200])
    late = days > 60
    if rng.random() < 0.5:
        q = f"The seller delivered {days} days late. Is there a breach?"
        a = ("Breach: the buyer may claim damages under the contract." if late
             else "No material breach: the delay is within the grace period.")
    else:
        q = f"卖方迟延交货{days}天。是否构成违约？"
        a = "构成违约：买方可依合同主张赔偿。" if late else "不构成根本违约：迟延在宽限期内。"
    return q, a


DOMAINS = {"finance": _finance, "medical": _medical, "manufacturing": _manufacturing, "legal": _legal}


def synthetic_records(n: int, seed: int = 0, domains: tuple[str, ...] = tuple(DOMAINS)) -> list[dict]:
    """``n`` synthetic chat records (``{"messages": [...]}``) drawn evenly from ``domains``."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        question, answer = DOMAINS[domains[i % len(domains)]](rng)
        records.append({"messages": [{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": question},
                                     {"role": "assistant", "content": answer}]})
    return records


def write_synthetic_set(directory: str | Path, n_train: int = 200, n_val: int = 24, seed: int = 0,
                        domains: tuple[str, ...] = tuple(DOMAINS)) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``val.jsonl`` (different seeds) under ``directory``; returns the paths."""
    directory = Path(directory)
    paths = {"train": directory / "train.jsonl", "val": directory / "val.jsonl"}
    write_chat_jsonl(paths["train"], synthetic_records(n_train, seed, domains))
    write_chat_jsonl(paths["val"], synthetic_records(n_val, seed + 10_000, domains))
    return paths
