"""Measure the two-tier decision on the curriculum's held-out synthetic stream, through the model server.

    python -m apps.finance.adjudicator_eval --server URL \\
        --pipeline stage2:finance:llm_val.jsonl --pipeline stage1:finance-stage1-only:llm_val_stage1.jsonl

A pipeline is ``FAST_TIER:ADAPTER:VALIDATION``: the curriculum's fast tier of that stage
(``fast_model_<stage>.pkl``: alert and review thresholds) flags the held-out stream; every flag, with its
episode (``apps.finance.episode``), goes to ``ADAPTER`` through ``/v1/score``; the final alert is the
calibrated verdict (``llm.Calibration``: the adapter's P(fraud) combined with the fast tier's score) at its
cut, both fitted on the ``VALIDATION`` records (held out of the adapter's own training data:
pseudo-labels for stage 2), never on the held-out stream. Reported next to each two-tier figure: the
fast tier alone at its alert threshold on the same stream, and the adapter's P(fraud) alone (at its own
validation cut and at 0.5). The held-out stream is regenerated from the curriculum's ``results.json``
(same seed and size). Synthetic data.
"""
from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apps.finance.adjudicator_data import flag_set
from apps.finance.data import GeneratorConfig, generate_columns
from apps.finance.episode import Thresholds
from apps.finance.features import featurize_all
from apps.finance.llm import CALIBRATION_FILE, LABELS, Calibration, score_prompt_from_record
from apps.finance.model import FastScorer, best_f1_threshold, metrics
from shared.io import InputError, read_jsonl, write_jsonl_atomic, write_text_atomic


@dataclass(frozen=True)
class PipelineSpec:
    fast_tier: str     # curriculum stage whose fast tier flags: stage1 | stage2
    adapter: str
    validation: str    # chat records (file name in the curriculum directory, or a path)

    @classmethod
    def parse(cls, text: str) -> PipelineSpec:
        parts = text.split(":")
        if len(parts) != 3 or parts[0] not in ("stage1", "stage2") or not all(parts):
            raise InputError(f"--pipeline {text!r}: expected stage1|stage2:ADAPTER:VALIDATION_JSONL")
        return cls(*parts)


def p_fraud(client, adapter: str, prompts: list[str], workers: int = 8) -> np.ndarray:
    """P(fraud) for each prompt; concurrent requests let the server batch them."""
    def one(prompt: str) -> float:
        return client.score(adapter, prompt, LABELS)["fraud"]

    with ThreadPoolExecutor(workers) as pool:
        return np.fromiter(pool.map(one, prompts), np.float64, len(prompts))


@dataclass
class Validation:
    """The adapter's held-out flags: label, the fast tier's score and threshold, the adapter's P(fraud)."""

    y: np.ndarray
    score: np.ndarray
    threshold: np.ndarray
    p: np.ndarray

    def relative(self) -> np.ndarray:
        return _logit(self.score) - _logit(self.threshold)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def score_validation(client, adapter: str, path: Path) -> Validation:
    records = list(read_jsonl(path))
    if not records:
        raise InputError(f"{path}: no validation records")
    if any("flag" not in r for r in records):
        raise InputError(f"{path}: records without 'flag' (score, threshold); re-run `dsv finance curriculum`")
    return Validation(
        y=np.array([r["messages"][-1]["content"].startswith("fraud") for r in records], dtype=int),
        score=np.array([r["flag"]["score"] for r in records], dtype=np.float64),
        threshold=np.array([r["flag"]["threshold"] for r in records], dtype=np.float64),
        p=p_fraud(client, adapter, [score_prompt_from_record(r) for r in records]))


def fit_calibration(val: Validation) -> tuple[Calibration, dict]:
    """Logistic regression of the label on (fast-tier log-odds relative to its threshold, adapter
    log-odds) on the validation flags; the cut is half the best F1 reached there.

    For calibrated probabilities the F1-optimal cut is F*/2 (Lipton et al., 2014, "Thresholding
    classifiers to maximize F1 score"). The arg-max cut itself rests on the ~15 legit records of a stage-2
    validation set and swung from 0.28 to 0.79 between adapters; it is reported, not used."""
    from sklearn.linear_model import LogisticRegression

    features = np.c_[val.relative(), _logit(val.p)]
    lr = LogisticRegression().fit(features, val.y)
    (fast_weight, model_weight), bias = lr.coef_[0], lr.intercept_[0]
    q = lr.predict_proba(features)[:, 1]
    argmax_cut = best_f1_threshold(val.y, q)
    best_f1 = metrics(val.y, q, argmax_cut)["f1"]
    return (Calibration(float(fast_weight), float(model_weight), float(bias), best_f1 / 2),
            {"best_f1": best_f1, "argmax_cut": round(argmax_cut, 4)})


def calibrated(cal: Calibration, score, threshold, p) -> np.ndarray:
    return np.fromiter((cal.probability(float(s), float(t), float(q)) for s, t, q in zip(score, threshold, p)),
                       np.float64, len(p))


def evaluate(curriculum_dir: Path, server: str, specs: list[PipelineSpec], api_key: str | None = None,
             dump_dir: Path | None = None) -> dict:
    from core.client import ModelClient

    results_file = curriculum_dir / "results.json"
    if not results_file.exists():
        raise InputError(f"{results_file}: run `dsv finance curriculum` first")
    config = json.loads(results_file.read_text())["config"]
    n, seed, drift = config["n_test"], config["data_seeds"][2], config["drift"]
    test = generate_columns(GeneratorConfig(n=n, seed=seed, drift=drift))
    X = featurize_all(test)
    y = test["is_fraud"].astype(int)
    typologies = sorted(set(test["typology"].tolist()) - {""})
    client = ModelClient(server, api_key, timeout=300)
    out: dict = {"data": f"synthetic held-out stream seed {seed}, drift {drift}, n={n}, {int(y.sum())} frauds",
                 "pipelines": {}}
    for spec in specs:
        fast = FastScorer.load(curriculum_dir / f"fast_model_{spec.fast_tier}.pkl")
        p = fast.predict_proba(X)
        flags = flag_set(test, X, p, Thresholds(fast.threshold, fast.review_at))
        val_path = Path(spec.validation)
        val = score_validation(client, spec.adapter, val_path if val_path.is_absolute() else curriculum_dir / val_path)
        cal, cut_choice = fit_calibration(val)
        adapter_cut = best_f1_threshold(val.y, val.p)
        t0 = time.time()
        pf = p_fraud(client, spec.adapter, flags.prompts())
        elapsed = time.time() - t0
        scores = np.array([a["score"] for a in flags.alerts])
        verdict = calibrated(cal, scores, np.full(len(scores), fast.threshold), pf)

        def on_stream(values: np.ndarray) -> np.ndarray:
            full = np.zeros(len(y))
            full[flags.rows] = values
            return full

        decided = on_stream(verdict) >= cal.cut
        flagged_truth = y[flags.rows]
        out["pipelines"][f"{spec.fast_tier}+{spec.adapter}"] = {
            "fast_tier": {"alert_threshold": round(fast.threshold, 4), "review_threshold": round(fast.review_at, 4),
                          "alone": metrics(y, p, fast.threshold)},
            "flags": len(flags), "frauds_flagged": int(flagged_truth.sum()),
            "adjudicated_per_s": round(len(flags) / max(elapsed, 1e-9), 1),
            "validation": {"file": str(spec.validation), "records": len(val.y),
                           "fraud_share": round(float(val.y.mean()), 4), "calibration": cal.to_json(),
                           "cut_choice": cut_choice,
                           "calibrated": metrics(val.y, calibrated(cal, val.score, val.threshold, val.p), cal.cut),
                           "adapter_alone": metrics(val.y, val.p, adapter_cut), "adapter_cut": round(adapter_cut, 4)},
            # the two-tier decision: flags confirmed by the calibrated verdict
            "two_tier": metrics(y, on_stream(verdict), cal.cut),
            "two_tier_at_argmax_cut": metrics(y, on_stream(verdict), cut_choice["argmax_cut"]),
            # the adapter's P(fraud) alone, at its own validation cut and at P(fraud) > P(legit)
            "two_tier_adapter_alone": metrics(y, on_stream(pf), adapter_cut),
            "two_tier_adapter_alone_at_0.5": metrics(y, on_stream(pf), 0.5),
            # ranking quality on the flags alone, against what a random order scores (their fraud share)
            "ranking_on_flags": {"fraud_share": round(float(flagged_truth.mean()), 4) if len(flags) else 0.0,
                                 "auprc_fast_score": metrics(flagged_truth, scores, 0.5)["auprc"] if len(flags) else 0.0,
                                 "auprc_adapter": metrics(flagged_truth, pf, 0.5)["auprc"] if len(flags) else 0.0,
                                 "auprc_calibrated": metrics(flagged_truth, verdict, 0.5)["auprc"] if len(flags) else 0.0},
            "per_typology_recall": {t: round(float(decided[test["typology"] == t].mean()), 3) for t in typologies},
        }
        if dump_dir is not None:  # one row per flag, for analysis (synthetic truth included)
            write_jsonl_atomic(Path(dump_dir) / f"{spec.fast_tier}+{spec.adapter}.jsonl", (
                {"tx_id": a["tx_id"], "score": a["score"], "alert": a["alert"], "p_fraud": float(q),
                 "verdict": float(v), "is_fraud": int(y[r]), "typology": str(test["typology"][r]),
                 "episode_size": len(nb)}
                for a, q, v, r, nb in zip(flags.alerts, pf, verdict, flags.rows.tolist(), flags.neighbours)))
    client.close()
    return out


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", required=True, help="model server base URL (…/v1)")
    ap.add_argument("--curriculum-dir", type=Path, default=None,
                    help="output of `dsv finance curriculum` (default: DSV_HOME/finance/curriculum)")
    ap.add_argument("--pipeline", action="append", required=True, type=PipelineSpec.parse,
                    help="FAST_TIER:ADAPTER:VALIDATION, e.g. stage2:finance:llm_val.jsonl (repeatable)")
    ap.add_argument("--api-key", default=None, help="bearer key (default: DSV_API_KEY)")
    ap.add_argument("--dump", type=Path, default=None, help="write each pipeline's flags with P(fraud) here (JSONL)")
    ap.add_argument("--write-calibration", action="store_true",
                    help="save each adapter's calibration (fitted on its validation flags) to "
                         "DSV_HOME/finance/adjudicator_calibration.json, where `dsv finance adjudicate` and "
                         "`dsv finance service` read it")
    args = ap.parse_args()
    from shared.settings import load_settings

    app_dir = load_settings().app_dir("finance")
    curriculum_dir = args.curriculum_dir or app_dir / "curriculum"
    key = args.api_key or os.environ.get("DSV_API_KEY")
    result = evaluate(curriculum_dir, args.server, args.pipeline, key, args.dump)
    print(json.dumps(result, indent=2))
    if args.write_calibration:
        write_calibrations(app_dir / CALIBRATION_FILE, args.pipeline, result)


def write_calibrations(path: Path, specs: list[PipelineSpec], result: dict) -> None:
    """Merge each adapter's calibration (with the validation it came from) into ``path``, atomically."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    for spec in specs:
        validation = result["pipelines"][f"{spec.fast_tier}+{spec.adapter}"]["validation"]
        saved[spec.adapter] = {**validation["calibration"], "validation": validation["file"],
                               "validation_f1": validation["calibrated"]["f1"]}
    write_text_atomic(path, json.dumps(saved, indent=2))


if __name__ == "__main__":
    main()
