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

from apps.finance.data import GeneratorConfig, generate_columns
from apps.finance.features import featurize_all
from apps.finance.model import FastScorer, best_f1_threshold, fit_classifier, metrics

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
    s1 = generate_columns(GeneratorConfig(n=cfg.n_stage1, seed=101))
    real = generate_columns(GeneratorConfig(n=cfg.n_stage2, seed=202, drift=cfg.drift))
    test = generate_columns(GeneratorConfig(n=cfg.n_test, seed=303, drift=cfg.drift))
    X1, Xr, Xt = featurize_all(s1), featurize_all(real), featurize_all(test)
    y1, yr, yt = (c["is_fraud"].astype(int) for c in (s1, real, test))
    results: dict = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
                     "data": "synthetic (apps/finance/data.py); held-out stream seed 303, drift "
                             f"{cfg.drift}; stage-2 stream seed 202; stage-1 seed 101"}

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
        # The adjudicator sees the fast tier's score: give it out-of-sample scores on stage 1 too
        # (two-fold by time), or it learns to trust in-sample scores of ~1.0 for every fraud.
        half = len(y1) // 2
        p1 = np.empty(len(y1))
        for fit_rows, score_rows in ((slice(0, half), slice(half, None)), (slice(half, None), slice(0, half))):
            p1[score_rows] = fit_classifier(X1[fit_rows], y1[fit_rows], cfg.seed,
                                            max_iter=cfg.max_iter).predict_proba(X1[score_rows])[:, 1]
        # Stage 2's adjudicator pool adds the stage-1 alerts that episode consistency did not support:
        # isolated flags, mostly the drifted customers' innocent anomalies -- the alerts it must clear.
        _write_outputs(cfg.out_dir, results, real, Xr, pr, use | alerts, y_pseudo, thr1, s1, X1, p1)
        # The stage-2 fast tier with its threshold: what `adjudicator_eval` puts in front of the adapter.
        FastScorer(m2, thr2, meta={"source": "curriculum stage 2", "thresholds": results["thresholds"]}
                   ).save(Path(cfg.out_dir) / "fast_model_stage2.pkl")
    return results


def _write_outputs(out_dir: Path, results: dict, real, Xr, pr, pool2, y_pseudo, thr1: float, s1, X1, p1,
                   max_records: int = 1600) -> None:
    """Results JSON plus the adjudicator's two chat data sets.

    The adjudicator only ever sees what the fast tier flags, so its training records are the rows the
    fast tier scores near or above its threshold (>= a quarter of it: the borderline cases it must
    confirm or clear), all (pseudo-)frauds, and a few clear negatives, each with the account's recent
    history (``llm.recent_history``)."""
    from apps.finance.llm import chat_record, recent_history
    from apps.finance.model import reasons_for
    from shared.io import write_jsonl_atomic, write_text_atomic

    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2))
    rng = np.random.default_rng(0)
    counts = {}
    # Stage 2 knows no typologies (its labels are mostly pseudo-labels): generic reasons only.
    for name, cols, X, labels, pool, scores, typologies in (
            ("llm_stage1.jsonl", s1, X1, s1["is_fraud"].astype(int), np.ones(len(s1["ts"]), bool), p1, s1["typology"]),
            ("llm_stage2.jsonl", real, Xr, y_pseudo, pool2, pr, np.full(len(pr), ""))):
        pos = np.flatnonzero(pool & (labels == 1))
        hard = np.flatnonzero(pool & (labels == 0) & (scores >= thr1 / 4))
        clear = np.flatnonzero(pool & (labels == 0) & (scores < thr1 / 4))
        hard = rng.choice(hard, min(len(hard), max_records - len(pos) - len(pos) // 2), replace=False)
        clear = rng.choice(clear, min(len(clear), max(len(pos) // 2, max_records - len(pos) - len(hard))),
                           replace=False)
        rows = np.sort(np.r_[pos, hard, clear])
        counts[name] = {"fraud": len(pos), "legit_flagged_or_borderline": len(hard),
                        "legit_clear": len(clear)}
        reasons = reasons_for(X, rows)
        histories = recent_history(cols, rows)
        records = []
        for r, why, hist in zip(rows.tolist(), reasons, histories):
            tx = {k: (v[r].item() if hasattr(v[r], "item") else v[r]) for k, v in cols.items()
                  if k not in ("is_fraud", "typology", "label_ts")}
            alert = {"tx_id": tx["tx_id"], "score": float(scores[r]), "reasons": why, "tx": tx, "history": hist}
            records.append(chat_record(alert, bool(labels[r]), str(typologies[r])))
        rng.shuffle(records)
        if name == "llm_stage2.jsonl":  # a small held-out part is the fine-tune's validation set
            n_val = min(200, len(records) // 5)
            write_jsonl_atomic(out_dir / "llm_val.jsonl", records[:n_val])
            records = records[n_val:]
        write_jsonl_atomic(out_dir / name, records)
    results["llm_records"] = counts
    write_text_atomic(out_dir / "results.json", json.dumps(results, indent=2))
