"""The numbers a contract clause states, read the way a reviewer reads them (zh + en).

Contract review compares them with the limit a statute sets (a probation period of at most six months,
interest within four times the LPR, ...). Only what these checks need: percentages (百分之五十, 5成,
万分之五, 50 %, 50 percent), an interest rate's period (per month / 月息 / 每月N分), and durations in
months (十二个月, 一年, twelve months, 9 months).
"""
from __future__ import annotations

import re

_CN_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_CN_UNIT = {"十": 10, "百": 100, "千": 1000}
CN_NUMBER = "[零〇一二两三四五六七八九十百千]+"
_EN_NUMBER = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
              "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "eighteen": 18, "twenty-four": 24}
NUMBER = rf"\d+(?:\.\d+)?|{CN_NUMBER}|" + "|".join(sorted(_EN_NUMBER, key=len, reverse=True))


def parse_chinese_numeral(text: str) -> int:
    """一 .. 九千九百九十九 (and 两, 〇) -> int; the inverse of ``statutes.chinese_numeral``."""
    if not text or any(ch not in _CN_DIGIT and ch not in _CN_UNIT for ch in text):
        raise ValueError(f"not a Chinese numeral: {text!r}")
    total, digit = 0, None
    for ch in text:
        if ch in _CN_DIGIT:
            digit = _CN_DIGIT[ch]
        else:
            total += (1 if digit is None else digit) * _CN_UNIT[ch]   # 十二 = 1 x 10 + 2
            digit = None
    return total + (digit or 0)


def number(token: str) -> float:
    token = token.strip().lower()
    if token in _EN_NUMBER:
        return float(_EN_NUMBER[token])
    if re.fullmatch(CN_NUMBER, token):
        return float(parse_chinese_numeral(token))
    return float(token)


_PERCENT = re.compile(
    rf"(?P<per>百分之|千分之|万分之)(?P<cn>{CN_NUMBER}|\d+(?:\.\d+)?)"
    rf"|(?P<tenths>\d|[一二三四五六七八九])成"
    rf"|(?P<num>\d+(?:\.\d+)?)\s*(?:%|％|percent\b|per cent\b)", re.IGNORECASE)
_PER_BASE = {"百分之": 1.0, "千分之": 0.1, "万分之": 0.01}


def percentages(text: str) -> list[float]:
    """Every percentage stated, as a percent: 百分之五十 -> 50, 8成 -> 80, 万分之五 -> 0.05, 7.5 % -> 7.5."""
    out = []
    for m in _PERCENT.finditer(text):
        if m.group("per"):
            out.append(number(m.group("cn")) * _PER_BASE[m.group("per")])
        elif m.group("tenths"):
            out.append(number(m.group("tenths")) * 10)
        else:
            out.append(float(m.group("num")))
    return out


_MONTHLY = re.compile(r"月利率|月息|每月|按月.{0,2}利|per month|a month|monthly|每个月", re.IGNORECASE)
_FEN_PER_MONTH = re.compile(rf"(?:每月|月息)\s*({CN_NUMBER}|\d+(?:\.\d+)?)\s*分")


def annual_interest_percent(text: str) -> float | None:
    """The highest interest rate stated, per year (monthly rates x 12; 每月N分 is N % a month)."""
    rates = [number(m.group(1)) for m in _FEN_PER_MONTH.finditer(text)]
    monthly = bool(rates) or bool(_MONTHLY.search(text))
    rates += percentages(text)
    if not rates:
        return None
    return max(rates) * (12 if monthly else 1)


_DURATION = re.compile(rf"(?P<n>{NUMBER})?\s*(?:个)?(?P<unit>个月|月|months?\b|年|years?\b)", re.IGNORECASE)


def months_near(text: str, keyword: re.Pattern, window: int = 30) -> float | None:
    """The duration (in months) stated next to ``keyword`` - after it first (试用期为十二个月), else just
    before it (为期一年的考察期) - so that a contract term elsewhere in the clause (期限三年) is not taken."""
    m = keyword.search(text)
    if m is None:
        return None
    after = text[m.end():m.end() + window]
    before = text[max(0, m.start() - window):m.start()]
    for span, pick in ((after, 0), (before, -1)):
        found = [d for d in _DURATION.finditer(span) if d.group("n") or d.group("unit").lower().startswith("month")]
        if found:
            d = found[pick]
            n = number(d.group("n")) if d.group("n") else 1.0        # "the first month"
            return n * (12 if d.group("unit").lower() in ("年", "year", "years") else 1)
    return None
