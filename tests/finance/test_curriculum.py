"""The curriculum runs end to end at a small scale (the reported figures come from `dsv finance curriculum`)."""
from __future__ import annotations

import json

from apps.finance.curriculum import CurriculumConfig, run_curriculum
from apps.finance.llm import TYPOLOGY_REASONS
from apps.finance.model import FastScorer


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


def test_curriculum_small(tmp_path):
    res = run_curriculum(CurriculumConfig(n_stage1=20_000, n_stage2=20_000, n_test=15_000, max_iter=40,
                                          n_adjudicator_stage1=40_000, data_seeds=(101, 202, 304), out_dir=tmp_path))
    for stage in ("stage1_synthetic_only", "stage2_curriculum"):
        assert set(res[stage]) >= {"precision", "recall", "f1", "auprc"} and res[stage]["positives"] > 0
    assert "seed 304" in res["data"] and list(res["config"]["data_seeds"]) == [101, 202, 304]
    pseudo = res["stage2_pseudo_labels"]
    assert pseudo["positives"] > 0 and pseudo["positive_precision_vs_truth"] > 0.5
    assert json.loads((tmp_path / "results.json").read_text())["stage2_curriculum"] == res["stage2_curriculum"]

    # The adjudicator's two stages: the flags of each stage's fast tier, each with its episode.
    stage1 = [json.loads(line) for line in _lines(tmp_path / "llm_stage1.jsonl")]
    stage2 = [json.loads(line) for line in _lines(tmp_path / "llm_stage2.jsonl")]
    assert stage1 and stage2
    assert all("Within 30 min:" in r["messages"][1]["content"] for r in stage1 + stage2)
    answers2 = [r["messages"][-1]["content"] for r in stage2]
    assert all(a.startswith(("fraud: ", "legit: ")) for a in answers2)
    # Stage 2 has (pseudo-)labels but no typologies: no typology-specific reason may leak into it.
    assert not any(reason in a for a in answers2 for reason in TYPOLOGY_REASONS.values())
    assert any(reason in r["messages"][-1]["content"] for r in stage1 for reason in TYPOLOGY_REASONS.values())
    # Every flag is either a validation or a training record; legit training flags are repeated
    # (class balance), so the training file holds each distinct record once or ``legit_repeat`` times.
    for name, records in (("llm_stage1.jsonl", stage1), ("llm_stage2.jsonl", stage2)):
        counts = res["adjudicator_data"][name]
        distinct = {json.dumps(r, sort_keys=True) for r in records}
        assert counts["records"] == len(distinct) + counts["validation"]
        assert counts["training_records"] == len(records) >= len(distinct)
        legit = [r for r in records if r["messages"][-1]["content"].startswith("legit: ")]
        assert len(legit) == counts["legit_repeat"] * len({json.dumps(r, sort_keys=True) for r in legit})
    # Held-out validation records of each stage, disjoint from the training records.
    for train, val in (("llm_stage1.jsonl", "llm_val_stage1.jsonl"), ("llm_stage2.jsonl", "llm_val.jsonl")):
        held_out = _lines(tmp_path / val)
        assert held_out and not set(held_out) & set(_lines(tmp_path / train))

    # Each stage's fast tier is saved with the thresholds the curriculum chose for it.
    for stage in ("stage1", "stage2"):
        fast = FastScorer.load(tmp_path / f"fast_model_{stage}.pkl")
        assert round(fast.threshold, 4) == res["thresholds"][stage]
        assert 0 < fast.review_at < fast.threshold
