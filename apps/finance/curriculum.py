"""Curriculum for the pipeline's fraud decisions, measured on synthetic data.

Stage 1 trains on a large, fully labelled synthetic set. Stage 2 adapts to a "real" stream — generated
with another seed and strong drift (more travel and second devices among customers; fraudsters hijacking
the victim's own device, slower card-testing bursts, slower mule chains) — where only 0.3 % of
transactions carry labels. The unlabelled rest is used the way the product intends: pseudo-labels from
the stage-1 model, widened by *episode consistency* (fraud comes in episodes, so transactions of the same
account or device within an hour of a confident fraud are labelled fraud too), plus confident negatives.

Stage 2 also picks its alert threshold on the drifted stream (out of time, all rows, pseudo-labels),
not on stage-1 data: drift makes innocent anomalies common, and that moves the F1-best threshold.

Everything is evaluated on a held-out stream from a third seed with the same drift. "Without curriculum"
is the same pipeline trained on stage 1 only (and, as a second baseline, on the 0.3 % real labels only).
The same stage-2 pseudo-labelled set also becomes the adjudicator's stage-2 chat data (llm_stage2.jsonl,
with a held-out llm_val.jsonl), and the stage-2 fast tier is saved for ``adjudicator_eval``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from apps.finance.adjudicator_data import flag_set
from apps.finance.data import GeneratorConfig, generate_columns
from apps.finance.episode import Thresholds
from apps.finance.features import featurize_all
from apps.finance.model import REVIEW_FRACTION, FastScorer, best_f1_threshold, fit_classifier, metrics
from shared.io import write_jsonl_atomic, write_text_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurriculumConfig:
    n_stage1: int = 300_000
    n_stage2: int = 300_000
    n_test: int = 200_000
    label_share: float = 0.003        # share of the stage-2 stream that carries labels
    drift: float = 1.0
    episode_window_s: float = 3600.0  # episode consistency: same account/device within this window
    confident_negative: float = 0.002
    confident_positive: float = 0.5
    max_iter: int = 200
    seed: int = 0
    # Generator seeds of the three worlds: stage-1 synthetic set, stage-2 "real" stream, held-out stream.
    data_seeds: tuple[int, int, int] = (101, 202, 303)
    n_adjudicator_stage1: int = 1_000_000  # the adjudicator's stage-1 synthetic set (its flags become records)
    out_dir: Path | None = None


def _episode_neighbours(cols, positive: np.ndarray, window_s: float) -> np.ndarray:
    """Rows sharing an account or device with another positive row within ``window_s`` seconds."""
    import pandas as pd

    out = np.zeros(len(cols["ts"]), dtype=bool)
    if not positive.any():
        return out
    for key in ("account", "device"):
        df = pd.DataFrame({"k": cols[key], "ts": cols["ts"], "row": np.arange(len(cols["ts"]))})
        pos = df[positive].rename(columns={"ts": "pts", "row": "prow"})
        joined = df.merge(pos, on="k")
        near = joined[((joined["ts"] - joined["pts"]).abs() <= window_s)
                      & (joined["row"] != joined["prow"])]["row"].to_numpy()
        out[near] = True
    return out


def run_curriculum(cfg: CurriculumConfig) -> dict:
    rng = np.random.default_rng(cfg.seed)
    seed1, seed2, seed_test = cfg.data_seeds
    s1 = generate_columns(GeneratorConfig(n=cfg.n_stage1, seed=seed1))
    real = generate_columns(GeneratorConfig(n=cfg.n_stage2, seed=seed2, drift=cfg.drift))
    test = generate_columns(GeneratorConfig(n=cfg.n_test, seed=seed_test, drift=cfg.drift))
    X1, Xr, Xt = featurize_all(s1), featurize_all(real), featurize_all(test)
    y1, yr, yt = (c["is_fraud"].astype(int) for c in (s1, real, test))
    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                     "data": f"synthetic (apps/finance/data.py); held-out stream seed {seed_test}, drift "
                             f"{cfg.drift}; stage-2 stream seed {seed2}; stage-1 seed {seed1}"}

    # Stage 1: large labelled synthetic set; threshold chosen on its last 20 % (by time).
    cut = int(len(y1) * 0.8)
    m1 = fit_classifier(X1[:cut], y1[:cut], cfg.seed, max_iter=cfg.max_iter)
    thr1 = best_f1_threshold(y1[cut:], m1.predict_proba(X1[cut:])[:, 1])
    m1 = fit_classifier(X1, y1, cfg.seed, max_iter=cfg.max_iter)
    results["stage1_synthetic_only"] = metrics(yt, m1.predict_proba(Xt)[:, 1], thr1)

    # Baseline: only the sparse real labels.
    labelled = rng.random(len(yr)) < cfg.label_share
    results["real_labels_only"] = {"labelled": int(labelled.sum()), "labelled_fraud": int(yr[labelled].sum())}
    if yr[labelled].sum() >= 2:
        m_small = fit_classifier(Xr[labelled], yr[labelled], cfg.seed, max_iter=cfg.max_iter)
        results["real_labels_only"].update(metrics(yt, m_small.predict_proba(Xt)[:, 1], 0.5))

    # Stage 2: pseudo-labels on the unlabelled real stream + episode consistency + the real labels.
    pr = m1.predict_proba(Xr)[:, 1]
    alerts = pr >= thr1
    near_alert = _episode_neighbours(real, alerts, cfg.episode_window_s)
    # A fast-tier alert becomes a pseudo-positive only with episode support (another alert on the same
    # account/device within the window) or high confidence; isolated borderline alerts -- mostly the
    # drifted customers' innocent travel and second devices -- are left out rather than learned.
    seeds = alerts & (near_alert | (pr >= cfg.confident_positive))
    pseudo_pos = seeds | (_episode_neighbours(real, seeds, cfg.episode_window_s) & (pr >= cfg.confident_negative))
    pseudo_neg = (pr <= cfg.confident_negative) & ~pseudo_pos
    use = pseudo_pos | pseudo_neg | labelled
    y_pseudo = np.where(labelled, yr, pseudo_pos.astype(int))
    results["stage2_pseudo_labels"] = {
        "positives": int((use & (y_pseudo == 1)).sum()), "negatives": int((use & (y_pseudo == 0)).sum()),
        "unused": int((~use).sum()),
        # only measurable because the data is synthetic; the pipeline never sees these labels
        "positive_precision_vs_truth": round(float(yr[use & (y_pseudo == 1)].mean()), 4),
        "positive_recall_vs_truth": round(float((use & (y_pseudo == 1))[yr == 1].mean()), 4),
    }
    X2 = np.vstack([X1, Xr[use]])
    y2 = np.r_[y1, y_pseudo[use]]
    # Threshold: chosen where the model will work, on the drifted stream. A model trained on the stage-1
    # block and the first 80 % (by time) of the pseudo-labelled stream scores *every* row of the last
    # 20 %; pseudo-positives count as fraud, all other rows (confident negatives and the ambiguous rows
    # left out of training) as legit. Choosing it on stage-1 data, or on the confident rows only, hides
    # the drifted customers' innocent anomalies and gave a threshold several times too low.
    r_cut = int(len(yr) * 0.8)
    head = use & (np.arange(len(yr)) < r_cut)
    m2_val = fit_classifier(np.vstack([X1[:cut], Xr[head]]), np.r_[y1[:cut], y_pseudo[head]], cfg.seed,
                            max_iter=cfg.max_iter)
    thr2 = best_f1_threshold(y_pseudo[r_cut:], m2_val.predict_proba(Xr[r_cut:])[:, 1])
    m2 = fit_classifier(X2, y2, cfg.seed, max_iter=cfg.max_iter)
    p2 = m2.predict_proba(Xt)[:, 1]
    results["stage2_curriculum"] = metrics(yt, p2, thr2)
    results["thresholds"] = {"stage1": round(thr1, 4), "stage2": round(thr2, 4)}
    results["per_typology_recall"] = {
        stage: {t: round(float((p[test["typology"] == t] >= thr).mean()), 3)
                for t in sorted(set(test["typology"].tolist()) - {""})}
        for stage, p, thr in (("stage1", m1.predict_proba(Xt)[:, 1], thr1), ("stage2", p2, thr2))}

    if cfg.out_dir:
        out_dir = Path(cfg.out_dir)
        thresholds = {"stage1": Thresholds(thr1, thr1 * REVIEW_FRACTION), "stage2": Thresholds(thr2, thr2 * REVIEW_FRACTION)}
        for stage, model in (("stage1", m1), ("stage2", m2)):
            # What `adjudicator_eval` puts in front of the adapters: each stage's fast tier and thresholds.
            FastScorer(model, thresholds[stage].alert, review_threshold=thresholds[stage].review,
                       meta={"source": f"curriculum {stage}", "thresholds": results["thresholds"]}
                       ).save(out_dir / f"fast_model_{stage}.pkl")
        results["adjudicator_data"] = _write_adjudicator_data(
            cfg, out_dir, m1, thresholds, X1, y1, real, Xr, yr, y_pseudo, use)
        write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2))
    return results


def _write_adjudicator_data(cfg: CurriculumConfig, out_dir: Path, m1, thresholds: dict[str, Thresholds], X1, y1,
                            real, Xr, yr, y_pseudo, use) -> dict:
    """The adjudicator's curriculum: chat records of what each stage's fast tier flags, with episodes.

    Stage 1: a separate large synthetic set (no drift, labelled, typology-specific reasons) scored by the
    stage-1 fast tier, so the scores it shows are out of sample. Stage 2: the drifted stream with its
    pseudo-labels (0.3 % real labels), scored out of sample by stage-2 fast tiers (two folds: each trained
    on stage 1 plus the other half's pseudo-labels) at the stage-2 thresholds; generic reasons only (no
    typologies are known there). Held out for validation (and the adjudicator's decision cut-off):
    10 % of stage 1 (``llm_val_stage1.jsonl``), 20 % of stage 2 (``llm_val.jsonl``)."""
    extra = generate_columns(GeneratorConfig(n=cfg.n_adjudicator_stage1, seed=cfg.data_seeds[0] + 1))
    Xe = featurize_all(extra)
    flags1 = flag_set(extra, Xe, m1.predict_proba(Xe)[:, 1], thresholds["stage1"])

    half = len(yr) // 2
    p2 = np.empty(len(yr))
    for score_rows in (slice(0, half), slice(half, None)):
        fit = use.copy()
        fit[score_rows] = False
        model = fit_classifier(np.vstack([X1, Xr[fit]]), np.r_[y1, y_pseudo[fit]], cfg.seed, max_iter=cfg.max_iter)
        p2[score_rows] = model.predict_proba(Xr[score_rows])[:, 1]
    flags2 = flag_set(real, Xr, p2, thresholds["stage2"])

    rng = np.random.default_rng(cfg.seed)
    rng_balance = np.random.default_rng(cfg.seed + 1)  # its own stream: the validation split stays put
    summary = {}
    for name, val_name, flags, labels, typologies, truth, val_share in (
            ("llm_stage1.jsonl", "llm_val_stage1.jsonl", flags1, extra["is_fraud"], extra["typology"],
             extra["is_fraud"], 0.1),
            ("llm_stage2.jsonl", "llm_val.jsonl", flags2, y_pseudo, None, yr, 0.2)):
        records = flags.chat_records(labels, typologies)
        y = np.asarray(labels)[flags.rows].astype(int)
        order = rng.permutation(len(records))
        n_val = int(len(records) * val_share)
        write_jsonl_atomic(out_dir / val_name, [records[i] for i in order[:n_val]])
        train, legit_repeat = _balanced(order[n_val:], y, rng_balance)
        write_jsonl_atomic(out_dir / name, [records[i] for i in train])
        summary[name] = {"records": len(records), "validation": n_val, "fraud_share": round(float(y.mean()), 4),
                         "legit_repeat": legit_repeat, "training_records": len(train),
                         # only measurable because the data is synthetic; training never sees it
                         "label_agreement_with_truth": round(float((y == np.asarray(truth)[flags.rows]).mean()), 4)}
    return summary


def _balanced(rows: np.ndarray, y: np.ndarray, rng, max_repeat: int = 4) -> tuple[np.ndarray, int]:
    """Training rows with each legit flag repeated so the classes are about even (at most ``max_repeat``
    times). Most flags are fraud (72 % in stage 1, 89 % pseudo-fraud in stage 2 on the default seeds),
    and an adapter trained on that mix answers "fraud" with P ~0.99 for both classes."""
    legit, fraud = rows[y[rows] == 0], rows[y[rows] == 1]
    repeat = int(min(max_repeat, max(1, round(len(fraud) / max(len(legit), 1)))))
    return rng.permutation(np.r_[fraud, np.repeat(legit, repeat)]), repeat
