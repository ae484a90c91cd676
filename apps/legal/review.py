"""Contract review: split clauses, flag risky ones with the statute articles and precedents behind the
flag, suggest revised wording; and its measurement on the labelled clause set (apps/legal/clauses.py).

A clause is judged in two steps, the way a reviewer works:
- which rule of law is it about? A checklist of risky wordings (regexes, zh + en) answers at once for
  the wordings it knows; retrieval answers for the rest: the clause's nearest labelled reference clauses
  (character n-gram TF-IDF, Chinese and English without a model) vote on its *topic*;
- does it break that rule? Each category carries the test its statute sets (a probation period of at
  most six months - Labour Contract Law art. 19; interest within 4x the one-year LPR; liquidated damages
  not far above the loss; no exclusion of liability for injury or gross negligence; no sharing of
  personal data without consent; no retention without limit). A test that cannot decide falls back to
  the risk labels of the same-topic neighbours.
Retrieval alone cannot decide risk: a safe clause's nearest neighbours are its risky twins on the same
topic ("interest of 4 % per annum" vs "40 %"). Precedents come from the knowledge base: judgments the
tenant may read that cite the flag's statutes.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from apps.legal.clauses import DEVELOPMENT, UNSEEN, clause_dataset
from apps.legal.quantities import annual_interest_percent, months_near, percentages
from apps.legal.statutes import lookup

# PRC private lending: interest above 4x the one-year Loan Prime Rate at signing is not protected
# (SPC Provisions on Private Lending, art. 25, 2020 revision). One-year LPR 3.0 % (May 2025).
ONE_YEAR_LPR_PERCENT = 3.0
# Liquidated damages above the loss by more than 30 % count as "excessively higher" (SPC interpretation
# of the Civil Code's contract part, art. 65); with no loss figure in a clause, 30 % of the price is the flag.
PENALTY_FLAG_PERCENT = 30.0
PROBATION_MAX_MONTHS = 6.0       # Labour Contract Law art. 19, for contracts of three years and more


@dataclass(frozen=True)
class RiskCategory:
    name: str
    rule: re.Pattern
    reason: str
    statutes: tuple[str, ...]
    suggestion: str
    # The statute's test on a clause about this topic: True breaks it, False complies, None cannot tell.
    test: Callable[[str], bool | None]
    # For the numeric tests: the figure read from the clause against the limit, shown with the verdict.
    explain: Callable[[str], str] | None = None


def _r(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.IGNORECASE)


# --- The statutes' tests. Cue words are drawn from the development wordings and the checklist only
# (apps/legal/clauses.py: the unseen set was never used to choose them).

def _numeric(value: float | None, limit: float) -> bool | None:
    return None if value is None else value > limit


def _penalty_test(clause: str) -> bool | None:
    return _numeric(max(percentages(clause), default=None), PENALTY_FLAG_PERCENT)


def _interest_test(clause: str) -> bool | None:
    return _numeric(annual_interest_percent(clause), 4 * ONE_YEAR_LPR_PERCENT)


_PROBATION = _r(r"试用期|考察期|见习期|probation")


def _probation_test(clause: str) -> bool | None:
    return _numeric(months_near(clause, _PROBATION), PROBATION_MAX_MONTHS)


def _explain_penalty(clause: str) -> str:
    return f"states {max(percentages(clause)):g} % of the price; flagged above {PENALTY_FLAG_PERCENT:g} %"


def _explain_interest(clause: str) -> str:
    return (f"{annual_interest_percent(clause):g} % a year; the cap is 4 x the one-year LPR "
            f"({ONE_YEAR_LPR_PERCENT:g} %) = {4 * ONE_YEAR_LPR_PERCENT:g} %")


def _explain_probation(clause: str) -> str:
    return f"{months_near(clause, _PROBATION):g} months of probation; at most {PROBATION_MAX_MONTHS:g}"


def _cue_test(breaks: str, complies: str | None = None) -> Callable[[str], bool | None]:
    """Breaks the rule when a ``breaks`` cue is present and no ``complies`` cue (a carve-out or a
    safeguard) is; complies when only a ``complies`` cue is; otherwise undecided."""
    breaks_re, complies_re = _r(breaks), _r(complies) if complies else None

    def test(clause: str) -> bool | None:
        safeguarded = bool(complies_re and complies_re.search(clause))
        if breaks_re.search(clause):
            return not safeguarded
        return False if safeguarded else None
    return test


_liability_test = _cue_test(
    r"不承担|无须.{0,30}赔偿|概不负责|not be liable|under no circumstances|accepts no responsibility|no (responsibility|liability)",
    r"除.{0,40}外|except|unless|承担赔偿责任|shall compensate")
_unilateral_test = _cue_test(
    r"随时|自行|根据自身需要|不得提出异议|at any time|whenever it sees fit|sole discretion|without (notice|.{0,20}consent)",
    r"协商一致|双方.{0,6}书面|书面通知|both parties|written notice|material breach")
_overtime_test = _cue_test(
    r"不(另行|再)?(额外)?(支付|计发|计算)|no additional (pay|compensation)|not (separately )?(compensated|remunerated|paid)"
    r"|deemed included|included in the (base|monthly) salary|视为正常出勤",
    r"按照?国家规定|百分之[一二三]百|\d{3}\s*%")


def _data_sharing_test(clause: str) -> bool | None:
    if not re.search(r"data|information|details|资料|信息|记录", clause, re.IGNORECASE):
        return None  # not about personal data: "without consent" alone is another topic's matter
    if re.search(r"无需.{0,4}同意|without .{0,20}consent|discretion|自由", clause, re.IGNORECASE):
        return True
    if re.search(r"不会|不得|never|will not|shall not", clause, re.IGNORECASE):
        return False  # "will never sell": a promise, not a permission
    if re.search(r"同意|consent|data processing agreement", clause, re.IGNORECASE):
        return False
    if re.search(r"提供|转让|出售|共享|share|passed on|sell|disclose", clause, re.IGNORECASE):
        return True
    return None


_retention_test = _cue_test(
    r"永久|长期留存|不予删除|无限期|indefinitely|forever|never deleted|permanently|without (any )?time limit",
    r"(?<!不予)(?<!不)删除|no longer than|deleted (within|after)|必要的期限")


CATEGORIES = (
    RiskCategory("liability_exclusion",
                 _r(r"不承担任何(责任|赔偿)|免除.{0,8}(一切|全部)责任|shall not be liable for any|excludes all liability"),
                 "excludes liability for personal injury / intent / gross negligence (void)",
                 ("《中华人民共和国民法典》第五百零六条", "《中华人民共和国民法典》第四百九十七条"),
                 "Liability for personal injury and for loss caused intentionally or by gross negligence is not excluded.",
                 _liability_test),
    RiskCategory("excessive_penalty",
                 _r(r"违约金.{0,10}(百分之[五六七八九]十|[5-9]\d\s*%)|penalty of\s*[5-9]\d\s*%|liquidated damages of\s*[5-9]\d\s*%"),
                 "liquidated damages far above the likely loss (court may reduce)",
                 ("《中华人民共和国民法典》第五百八十五条",),
                 "Liquidated damages shall not exceed 30% of the loss actually caused, adjustable under law.",
                 _penalty_test, _explain_penalty),
    RiskCategory("unilateral_change",
                 _r(r"有权随时(单方)?(修改|变更|解除)|may (amend|modify|terminate) this (agreement|contract) at any time"),
                 "one party may change or terminate at will",
                 ("《中华人民共和国民法典》第五百六十二条", "《中华人民共和国民法典》第四百九十七条"),
                 "Either party may terminate only for the reasons agreed here or provided by law, with 30 days' written notice.",
                 _unilateral_test),
    RiskCategory("usurious_interest",
                 _r(r"(年|月)利率.{0,6}(百分之[三四五六七八九]十|[3-9]\d\s*%)|interest (rate )?of\s*[3-9]\d\s*% per (annum|month)"),
                 "interest rate above the legal cap on private lending",
                 ("《中华人民共和国民法典》第六百八十条",),
                 "Interest shall not exceed the cap set by the national rules on private lending.",
                 _interest_test, _explain_interest),
    RiskCategory("probation_too_long",
                 _r(r"试用期.{0,6}(六|七|八|九|十|十二)个月"),
                 "probation period longer than the statutory maximum",
                 ("《中华人民共和国劳动合同法》第十九条",),
                 "The probation period shall not exceed the maximum for the contract term (at most six months).",
                 _probation_test, _explain_probation),
    RiskCategory("no_overtime_pay",
                 _r(r"加班.{0,6}不(另行)?(支付|计发)|no (additional )?(pay|compensation) for overtime"),
                 "overtime without the statutory premium",
                 ("《中华人民共和国劳动法》第四十四条",),
                 "Overtime is paid at no less than 150% (weekdays), 200% (rest days) and 300% (public holidays) of wages.",
                 _overtime_test),
    RiskCategory("data_without_basis",
                 _r(r"(share|sell|disclose) (the )?(customer|user|personal) data (with|to) (any )?third parties|"
                    r"无需(经)?(个人|用户)同意.{0,10}(提供|共享|出售)"),
                 "personal data shared without a lawful basis / consent",
                 ("GDPR Article 6", "《中华人民共和国个人信息保护法》第十三条"),
                 "Personal data is shared with third parties only with a lawful basis (e.g. consent) and a data processing agreement.",
                 _data_sharing_test),
    RiskCategory("indefinite_retention",
                 _r(r"retain(ed)? (all )?(personal )?data (indefinitely|forever|without (any )?time limit)|永久(保存|保留).{0,6}(个人)?信息"),
                 "personal data kept without a retention limit",
                 ("GDPR Article 5",),
                 "Personal data is kept no longer than necessary for the stated purpose and deleted within 12 months after it ends.",
                 _retention_test),
)
CATEGORY = {c.name: c for c in CATEGORIES}

def split_clauses(text: str) -> list[str]:
    """Numbered clauses (1. / 1) / (1) / 第一条 / 一、) or, failing that, paragraphs and sentences."""
    marker = re.compile(r"(?m)^\s*(?:\d+(?:\.\d+)*[.)、]|\(\d+\)|（\d+）|第[一二三四五六七八九十百]+条|[一二三四五六七八九十]+、)\s*")
    parts = [p.strip() for p in marker.split(text) if p and p.strip()]
    if len(parts) <= 1:
        parts = [p.strip() for p in re.split(r"\n\s*\n|(?<=[。；])|(?<=[.;])\s+(?=[A-Z])", text) if p and p.strip()]
    return parts


@dataclass
class Finding:
    index: int
    clause: str
    risky: bool
    category: str | None = None
    reasons: list[str] = field(default_factory=list)
    statutes: list[str] = field(default_factory=list)
    precedents: list[dict] = field(default_factory=list)
    suggestion: str = ""
    evidence: list[dict] = field(default_factory=list)   # retrieved reference clauses

    def to_json(self) -> dict:
        return {"index": self.index, "clause": self.clause, "risky": self.risky, "category": self.category,
                "reasons": self.reasons, "statutes": [{"key": k, "text": lookup(k).text} for k in self.statutes],
                "precedents": self.precedents, "suggestion": self.suggestion, "evidence": self.evidence}


class ClauseBank:
    """Nearest labelled reference clauses by character 1-3-gram TF-IDF cosine (zh + en, no model; single
    characters carry much of a Chinese clause's meaning: 息, 删, 薪)."""

    def __init__(self, clauses: list[dict]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.clauses = clauses
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 3), sublinear_tf=True)
        self.matrix = self.vectorizer.fit_transform([c["text"] for c in clauses])

    def nearest(self, text: str, k: int = 5, exclude_template: str | None = None) -> list[tuple[dict, float]]:
        """The k most similar reference clauses, at most one per wording (its best fill): the bank holds
        several fills of each wording, which would otherwise crowd the others out."""
        sims = (self.matrix @ self.vectorizer.transform([text]).T).toarray().ravel()
        out, seen = [], set()
        for i in sims.argsort()[::-1]:
            template = self.clauses[i].get("template", i)
            if template == exclude_template or template in seen:  # leave-one-wording-out evaluation
                continue
            seen.add(template)
            out.append((self.clauses[i], float(sims[i])))
            if len(out) == k:
                break
        return out


@dataclass
class Verdict:
    category: str | None            # the risk category the clause breaks; None = not flagged
    reasons: list[str] = field(default_factory=list)
    topic: str | None = None        # what the clause is about (may be a topic it complies with)
    evidence: list[dict] = field(default_factory=list)


class ContractReviewer:
    def __init__(self, cfg=None, use_retrieval: bool = True, bank: list[dict] | None = None, k: int = 5,
                 min_similarity: float = 0.05, confident_similarity: float = 0.5):
        self.cfg = cfg                          # LegalConfig for precedents; None = no knowledge base
        self.use_retrieval = use_retrieval
        self.bank = ClauseBank(bank if bank is not None else clause_dataset(seed=101)) if use_retrieval else None
        self.k = k
        self.min_similarity = min_similarity
        self.confident_similarity = confident_similarity
        self._retriever = None

    def judge(self, clause: str, exclude_template: str | None = None) -> Verdict:
        for cat in CATEGORIES:
            if cat.rule.search(clause):
                return Verdict(cat.name, [f"rule: {cat.reason}"], cat.name)
        if not self.use_retrieval:
            return Verdict(None)
        neighbours = [(c, s) for c, s in self.bank.nearest(clause, self.k, exclude_template) if s >= self.min_similarity]
        evidence = [{"text": c["text"], "label": c["label"], "topic": c["topic"], "similarity": round(s, 3)}
                    for c, s in neighbours]
        votes: dict[str | None, float] = {}
        for c, s in neighbours:
            votes[c["topic"]] = votes.get(c["topic"], 0.0) + s
        # Topics in vote order; the first whose statute test can read the clause decides (a clause about
        # data retention may sit nearest to data-sharing clauses). Boilerplate ahead of every topic: safe.
        for topic in sorted(votes, key=votes.get, reverse=True):
            if topic is None:  # boilerplate neighbours: only a topic's own test may still flag it
                continue
            breaks = CATEGORY[topic].test(clause)
            if breaks is not None:
                explain = CATEGORY[topic].explain
                how = "it fails the statute's test" + (f" ({explain(clause)})" if explain else "")
                return self._verdict(topic, breaks, how, evidence)
        topic = max(votes, key=votes.get) if votes else None
        if topic is None:
            return Verdict(None, evidence=evidence)
        # No test could read it: the risk labels of the top topic's neighbours decide, when they are close.
        same = [(c, s) for c, s in neighbours if c["topic"] == topic]
        risky = sum(s for c, s in same if c["label"] != "safe")
        breaks = risky > sum(s for c, s in same) - risky and max(s for _, s in same) >= self.confident_similarity
        return self._verdict(topic, breaks, "its closest reference clauses on this topic are risky", evidence)

    @staticmethod
    def _verdict(topic: str, breaks: bool, how: str, evidence: list[dict]) -> Verdict:
        like = f"about {topic.replace('_', ' ')} (like the reference clauses retrieved)"
        if not breaks:
            return Verdict(None, [f"{like}; complies"], topic, evidence)
        return Verdict(topic, [f"{like}; {how}: {CATEGORY[topic].reason}"], topic, evidence)

    def classify(self, clause: str, exclude_template: str | None = None) -> tuple[str | None, list[str], list[dict]]:
        v = self.judge(clause, exclude_template)
        return v.category, v.reasons, v.evidence

    def _precedents(self, statutes: list[str], clause: str, tenant: str | None) -> list[dict]:
        if self.cfg is None:
            return []
        if self._retriever is None:
            from apps.legal.pipeline import RetrievalMode, Retriever

            self._retriever = Retriever(self.cfg, RetrievalMode(True, True, False), top_k=20)
        query = " ".join([clause] + [lookup(s).text[:60] for s in statutes])
        hits = self._retriever.search(query, tenant=tenant, k=20)
        cited = [h for h in hits if set(h.statutes) & set(statutes)]  # only judgments applying these articles
        return [{"doc_id": h.doc_id, "title": h.title, "court": h.court, "date": h.date,
                 "statutes": list(h.statutes), "passage": h.text[:300]} for h in cited[:3]]

    def review(self, contract: str, tenant: str | None = None) -> list[Finding]:
        findings = []
        for i, clause in enumerate(split_clauses(contract), start=1):
            cat, reasons, evidence = self.classify(clause)
            f = Finding(i, clause, cat is not None, cat, reasons, evidence=evidence)
            if cat:
                c = CATEGORY[cat]
                f.statutes = [s for s in c.statutes if lookup(s) is not None]
                f.suggestion = c.suggestion
                f.precedents = self._precedents(f.statutes, clause, tenant)
            findings.append(f)
        return findings


def _accuracy(reviewer: ContractReviewer, test: list[dict], hide_own_wording: bool) -> dict:
    ok_binary = ok_cat = 0
    for c in test:
        cat, _, _ = reviewer.classify(c["text"], exclude_template=c["template"] if hide_own_wording else None)
        pred = cat or "safe"
        ok_binary += (pred == "safe") == (c["label"] == "safe")
        ok_cat += pred == c["label"]
    return {"accuracy_risky_vs_safe": round(ok_binary / len(test), 4), "accuracy_category": round(ok_cat / len(test), 4)}


def evaluate_review(seed: int = 7) -> dict:
    """Accuracy (risky/safe, and category) with the checklist alone vs checklist + retrieval + the
    statutes' tests, on three splits of the SYNTHETIC labelled set (apps/legal/clauses.py):
    - ``held_out_fills``: development wordings with other parties/numbers than the bank's;
    - ``held_out_templates``: leave-one-wording-out - the clause's own wording is hidden from the bank,
      so retrieval must generalise (the statutes' cue words were chosen on these wordings, so this
      split is optimistic for them);
    - ``unseen``: wordings never used to build or tune anything, against the full development bank."""
    dev = clause_dataset(DEVELOPMENT, n_per_template=3, seed=seed)
    unseen = clause_dataset(UNSEEN, n_per_template=3, seed=seed, name="unseen")
    out: dict = {"synthetic": True, "n_clauses": {"development": len(dev), "unseen": len(unseen)}}
    reviewers = {"without_retrieval": ContractReviewer(None, use_retrieval=False), "with_retrieval": ContractReviewer(None)}
    for split, test, hide in (("held_out_fills", dev, False), ("held_out_templates", dev, True), ("unseen", unseen, False)):
        out[split] = {name: _accuracy(r, test, hide) for name, r in reviewers.items()}
    return out
