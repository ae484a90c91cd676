"""Synthetic judgments (Chinese and English) that cite REAL statute articles.

Everything here is synthetic except the statute text: parties, courts' case numbers, facts and holdings
are drawn from templates; each judgment cites one or two real articles from ``statutes.py`` and quotes
them, so retrieval can be evaluated against a known gold article ("which article governs this?").

Fast enough for millions of records: random choices are drawn with NumPy per block of 10,000 records and
written as a stream (one ``write`` per block), ~20-40 k records/s on one core.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.legal.statutes import Statute, load_statutes
from shared.io import atomic_path

BLOCK = 10_000
ZH_ARTICLE_NO = re.compile(r"^第[零〇一二两三四五六七八九十百千]+条$")
TENANTS = ("firm-a", "firm-b", "firm-c")

ZH_SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈")
ZH_GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文斌宇浩凯鹏晨欣怡")
ZH_CITIES = ["北京", "上海", "广州", "深圳", "杭州", "南京", "成都", "武汉", "西安", "重庆", "天津", "苏州", "长沙", "郑州", "青岛"]
ZH_FIRM_WORDS = ["华信", "恒达", "宏远", "金桥", "新源", "瑞丰", "博远", "中联", "正泰", "安信", "鼎盛", "天成"]
ZH_FIRM_KIND = ["科技", "贸易", "建设", "物流", "置业", "信息技术", "实业", "餐饮管理"]
ZH_COURT_KIND = ["中级人民法院", "第一中级人民法院", "区人民法院", "高级人民法院", "互联网法院"]
EN_FIRST = ["Anna", "Lukas", "Marie", "Jonas", "Sofia", "Pierre", "Elena", "Mateo", "Ingrid", "Tomas", "Clara", "Niels"]
EN_LAST = ["Schmidt", "Rossi", "Dubois", "Novak", "Jensen", "Garcia", "Kowalski", "Lindqvist", "Moreau", "Weber"]
EN_FIRM = ["Northwind", "Bluepeak", "Helix", "Orbis", "Vantage", "Kestrel", "Lumen", "Arcadia", "Tessera", "Quanta"]
EN_FIRM_KIND = ["Data GmbH", "AI B.V.", "Analytics SA", "Cloud S.p.A.", "Payments Ltd", "Robotics AB", "Health Oy"]
EN_COURTS = ["Regional Court of Munich", "District Court of Amsterdam", "Tribunal judiciaire de Paris",
             "Court of Milan", "Stockholm District Court", "Commercial Court of Vienna", "High Court of Dublin"]

# Each case type: PRC law department(s) its cited articles come from, a cause of action, facts, holding.
ZH_CASE_TYPES = {
    "民事": (("民法商法",), ["合同", "买卖合同", "借款合同", "租赁合同", "服务合同", "侵权责任", "股权转让"],
           "{a}与{b}于{date}签订{cause}，约定{b}应于约定期限内支付价款{amt}元。{b}逾期未履行，{a}多次催告无果，遂诉至本院。",
           "判令{b}于本判决生效之日起十日内向{a}支付{amt}元及相应利息；案件受理费由{b}负担。"),
    "劳动": (("社会法",), ["劳动合同", "工伤保险待遇", "劳动报酬", "经济补偿金"],
           "{a}于{date}入职{b}，双方因{cause}发生争议，{a}主张{b}拖欠款项{amt}元，经仲裁后不服诉至本院。",
           "判令{b}向{a}支付{amt}元；驳回{a}的其他诉讼请求。"),
    "刑事": (("刑法",), ["盗窃", "诈骗", "危险驾驶", "故意伤害", "非法经营"],
           "公诉机关指控，被告人{b}于{date}在{city}实施{cause}行为，涉案金额{amt}元，被害人{a}报案后被告人到案。",
           "被告人{b}犯{cause}罪，判处有期徒刑{years}年，并处罚金{fine}元。"),
    "行政": (("行政法",), ["行政处罚", "行政许可", "政府信息公开", "行政强制"],
           "原告{a}不服被告{b}于{date}作出的{cause}决定，认为该决定认定事实不清，罚没金额{amt}元明显不当，提起行政诉讼。",
           "撤销被告{b}作出的{cause}决定，责令其在六十日内重新作出处理。"),
}
EN_CASE_TYPES = {
    "data protection": (("GDPR",), ["unlawful processing of personal data", "refusal of a data subject access request",
                                    "a personal data breach", "direct marketing without consent"],
                        ("On {date} the claimant {a} complained that the defendant {b} was responsible for {cause}. "
                         "The claimant sought damages of EUR {amt}."),
                        "The court ordered {b} to pay EUR {amt} to {a} and to bring its processing into compliance."),
    "artificial intelligence": (("AI Act",), ["deployment of a high-risk AI system without conformity assessment",
                                              "a prohibited biometric categorisation practice",
                                              "missing transparency information for a chatbot"],
                                ("On {date} the authority found that {b} was engaged in {cause}; {a} challenged the "
                                 "resulting fine of EUR {amt}."),
                                "The court upheld the decision against {b} in part and reduced the fine to EUR {fine}."),
    "cybersecurity": (("NIS2", "CRA", "DORA"), ["failure to report a significant incident",
                                                 "a product placed on the market with known exploitable vulnerabilities",
                                                 "inadequate ICT risk management"],
                      "On {date} {b} suffered {cause}, which affected its customer {a}; losses of EUR {amt} were claimed.",
                      "The court found {b} liable and awarded EUR {amt} to {a}."),
}


@dataclass(frozen=True)
class GeneratorConfig:
    n: int
    seed: int = 0
    zh_share: float = 0.5        # fraction of Chinese judgments
    private_share: float = 0.2   # fraction labelled with a tenant instead of "public"
    second_citation: float = 0.4  # probability of citing a second article


def _pools() -> tuple[dict[str, list[Statute]], dict[str, list[Statute]]]:
    zh: dict[str, list[Statute]] = {}
    en: dict[str, list[Statute]] = {}
    for s in load_statutes():
        # Only articles numbered 第X条 (a few decisions number items 条目七, which nobody cites so).
        if s.language == "zh" and 15 <= len(s.text) <= 220 and ZH_ARTICLE_NO.match(s.article):
            zh.setdefault(s.department, []).append(s)
        elif s.language == "en" and len(s.text) >= 80:
            en.setdefault(s.department, []).append(s)
    return zh, en


def _quote(s: Statute) -> str:
    if s.language == "zh":
        return s.text if len(s.text) <= 90 else s.text[:88] + "……"
    words = s.text.split()
    return " ".join(words[:40]) + (" ..." if len(words) > 40 else "")


def iter_judgments(cfg: GeneratorConfig) -> Iterator[dict]:
    """Yield ``cfg.n`` synthetic judgment records (dicts following the corpus contract)."""
    zh_pool, en_pool = _pools()
    zh_types, en_types = list(ZH_CASE_TYPES), list(EN_CASE_TYPES)
    base_day = dt.date(2015, 1, 1).toordinal()
    rng = np.random.default_rng(cfg.seed)
    for start in range(0, cfg.n, BLOCK):
        m = min(BLOCK, cfg.n - start)
        # Every random choice for the block in a few vectorised draws.
        is_zh = rng.random(m) < cfg.zh_share
        ctype = rng.integers(0, 1 << 30, m)
        cause = rng.integers(0, 1 << 30, m)
        picks = rng.integers(0, 1 << 30, (m, 2))
        second = rng.random(m) < cfg.second_citation
        names = rng.integers(0, 1 << 30, (m, 6))
        days = rng.integers(0, 365 * 11, m)
        amounts = rng.integers(1, 500, m) * 1000
        years = rng.integers(1, 8, m)
        private = rng.random(m) < cfg.private_share
        tenant = rng.integers(0, len(TENANTS), m)
        for i in range(m):
            n_i = names[i]
            date = dt.date.fromordinal(base_day + int(days[i]))
            amt = int(amounts[i])
            if is_zh[i]:
                kind = zh_types[ctype[i] % len(zh_types)]
                depts, causes, facts_t, holding_t = ZH_CASE_TYPES[kind]
                pool = zh_pool[depts[0]]
                city = ZH_CITIES[n_i[0] % len(ZH_CITIES)]
                a = ZH_SURNAMES[n_i[1] % len(ZH_SURNAMES)] + ZH_GIVEN[n_i[2] % len(ZH_GIVEN)]
                if kind in ("民事", "劳动", "行政"):
                    b = (ZH_CITIES[n_i[3] % len(ZH_CITIES)] + ZH_FIRM_WORDS[n_i[4] % len(ZH_FIRM_WORDS)]
                         + ZH_FIRM_KIND[n_i[5] % len(ZH_FIRM_KIND)] + "有限公司")
                    if kind == "行政":
                        b = city + "市市场监督管理局"
                else:
                    b = ZH_SURNAMES[n_i[3] % len(ZH_SURNAMES)] + ZH_GIVEN[n_i[4] % len(ZH_GIVEN)] + ZH_GIVEN[n_i[5] % len(ZH_GIVEN)]
                c = causes[cause[i] % len(causes)]
                cited = [pool[picks[i, 0] % len(pool)]]
                if second[i]:
                    cited.append(pool[picks[i, 1] % len(pool)])
                slots = {"a": a, "b": b, "cause": c, "amt": amt, "date": f"{date.year}年{date.month}月{date.day}日",
                         "city": city, "years": int(years[i]), "fine": amt // 10}
                reasoning = "；".join(f"{s.key}规定：“{_quote(s)}”" for s in cited)
                court = city + ZH_COURT_KIND[n_i[0] % len(ZH_COURT_KIND)]
                text = (f"{court}\n{kind}判决书（合成）\n原告：{a}。被告：{b}。\n经审理查明：{facts_t.format(**slots)}\n"
                        f"本院认为：{reasoning}。本案中，{b}的行为应依据上述规定处理。\n判决如下：{holding_t.format(**slots)}")
                title = f"{a}诉{b}{c}纠纷案" if kind != "刑事" else f"{b}{c}案"
                lang = "zh"
            else:
                kind = en_types[ctype[i] % len(en_types)]
                regs, causes, facts_t, holding_t = EN_CASE_TYPES[kind]
                pool = en_pool[regs[picks[i, 1] % len(regs)]]
                a = EN_FIRST[n_i[1] % len(EN_FIRST)] + " " + EN_LAST[n_i[2] % len(EN_LAST)]
                b = EN_FIRM[n_i[3] % len(EN_FIRM)] + " " + EN_FIRM_KIND[n_i[4] % len(EN_FIRM_KIND)]
                c = causes[cause[i] % len(causes)]
                cited = [pool[picks[i, 0] % len(pool)]]
                if second[i]:
                    cited.append(pool[(picks[i, 0] // 7) % len(pool)])
                slots = {"a": a, "b": b, "cause": c, "amt": amt, "date": date.isoformat(), "fine": amt // 2}
                reasoning = " ".join(f"{s.key} provides: \"{_quote(s)}\"" for s in cited)
                court = EN_COURTS[n_i[0] % len(EN_COURTS)]
                text = (f"{court}. Judgment (synthetic), {kind}.\nParties: {a} (claimant) v {b} (defendant).\n"
                        f"Facts: {facts_t.format(**slots)}\nReasoning: {reasoning} Applying these provisions, "
                        f"the conduct of {b} falls within their scope.\nHolding: {holding_t.format(**slots)}")
                title = f"{a} v {b} ({c})"
                lang = "en"
            yield {
                "id": f"syn-{cfg.seed}-{start + i:08d}", "court": court, "date": date.isoformat(),
                "case_type": kind, "title": title, "text": text,
                "statutes": list(dict.fromkeys(s.key for s in cited)), "language": lang,
                "access": TENANTS[tenant[i]] if private[i] else "public",
            }


def write_corpus(cfg: GeneratorConfig, out: str | Path, progress: bool = True) -> int:
    """Stream ``cfg.n`` judgments to ``out`` (.jsonl, or .parquet) atomically; returns the count."""
    from tqdm import tqdm

    out = Path(out)
    bar = tqdm(total=cfg.n, unit="doc", disable=not progress, desc="generate")
    n = 0
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            batch: list[dict] = []
            for rec in iter_judgments(cfg):
                batch.append(rec)
                if len(batch) == BLOCK:
                    table = pa.Table.from_pylist(batch)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    n += len(batch); bar.update(len(batch)); batch = []
            if batch or writer is None:
                table = pa.Table.from_pylist(batch)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                n += len(batch); bar.update(len(batch))
            writer.close()
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                lines: list[str] = []
                for rec in iter_judgments(cfg):
                    lines.append(json.dumps(rec, ensure_ascii=False))
                    if len(lines) == BLOCK:
                        fh.write("\n".join(lines) + "\n")
                        n += len(lines); bar.update(len(lines)); lines = []
                if lines:
                    fh.write("\n".join(lines) + "\n")
                    n += len(lines); bar.update(len(lines))
    bar.close()
    return n


def make_questions(records: list[dict], n: int, seed: int = 1) -> list[dict]:
    """Evaluation questions: a paraphrase-free snippet of a judgment's first cited article wrapped in a
    question. Gold = that article's key; a hit is any retrieved passage whose judgment cites it."""
    from apps.legal.statutes import lookup

    rng = np.random.default_rng(seed)
    out = []
    for idx in rng.permutation(len(records)):
        rec = records[idx]
        st = lookup(rec["statutes"][0]) if rec["statutes"] else None
        if st is None:
            continue
        if st.language == "zh":
            body = st.text[:90]
            w = min(len(body), 18)
            off = int(rng.integers(0, max(1, len(body) - w)))
            q = f"关于“{body[off:off + w]}”的情形，法院依据哪一条法律判决？"
        else:
            words = st.text.split()[:40]
            off = int(rng.integers(0, max(1, len(words) - 10)))
            q = f"Which provision applies where {' '.join(words[off:off + 10])}?"
        out.append({"question": q, "gold_statute": st.key, "language": st.language, "source_doc": rec["id"]})
        if len(out) == n:
            break
    return out
