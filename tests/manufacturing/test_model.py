"""The simulator's labels, the trained encoder's separation of normal from fault windows (AUROC
computed on a held-out fleet), persistence, hysteresis, and the equal-recall evaluation."""
from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.metrics import roc_auc_score

from apps.manufacturing.evaluation import evaluate_fleet
from apps.manufacturing.pipeline import HealthModel
from apps.manufacturing.scoring import apply_hysteresis
from apps.manufacturing.simulate import SimConfig, simulate_fleet
from apps.manufacturing.windows import sliding_windows


def test_simulator_is_seeded_and_faults_show_in_the_data():
    a = simulate_fleet(SimConfig(devices=20, days=3, seed=5, fault_fraction=1.0))
    b = simulate_fleet(SimConfig(devices=20, days=3, seed=5, fault_fraction=1.0))
    np.testing.assert_array_equal(np.nan_to_num(a.values), np.nan_to_num(b.values))
    lab = a.labels
    assert (lab.onset_ts < lab.failure_ts).all()
    # No data after failure; data right before it.
    for i, fail in enumerate(lab.failure_ts):
        after = a.ts >= fail
        assert np.isnan(a.values[i, after]).all() and not a.alive[i, after].any()
    # Overheating machines run hotter just before failure than before onset.
    hot = np.flatnonzero(lab.fault == "overheating")
    for i in hot:
        before = a.values[i, a.ts < lab.onset_ts[i], 2]
        late = a.values[i, (a.ts > lab.failure_ts[i] - 4 * 3600) & (a.ts < lab.failure_ts[i]), 2]
        assert np.nanmean(late) > np.nanmean(before) + 10


def test_trained_encoder_separates_normal_from_fault_windows(trained_model, heldout_fleet):
    cfg = trained_model.cfg
    win, ends = sliding_windows(heldout_fleet.values, cfg.window, cfg.stride)
    end_ts = heldout_fleet.ts[ends][None, :]
    onset = heldout_fleet.labels.onset_ts.to_numpy()[:, None]
    failure = heldout_fleet.labels.failure_ts.to_numpy()[:, None]
    profiles = trained_model.device_profiles(heldout_fleet.values, ends)     # each machine's own normal
    res = trained_model.score_windows(win.reshape(-1, cfg.window, len(cfg.sensors)),
                                      profiles.reshape(-1, *profiles.shape[2:]))
    dist = res["distance"].reshape(win.shape[:2])
    valid = res["valid"].reshape(win.shape[:2])
    normal = valid & ((onset < 0) | (end_ts < onset))
    late_fault = valid & (onset >= 0) & (end_ts >= (onset + failure) / 2) & (end_ts < failure)
    assert late_fault.sum() > 50 and normal.sum() > 1000
    y = np.r_[np.zeros(normal.sum()), np.ones(late_fault.sum())]
    auroc = roc_auc_score(y, np.r_[dist[normal], dist[late_fault]])
    assert auroc > 0.8, f"held-out AUROC {auroc:.3f}"
    health = res["health"].reshape(win.shape[:2])
    assert np.median(health[normal]) > 80 and np.median(health[late_fault]) < np.median(health[normal])


def test_saved_model_scores_identically(trained_model, trained_model_dir, heldout_fleet):
    win, _ = sliding_windows(heldout_fleet.values[:3], 24, 3)
    flat = win.reshape(-1, 24, 7)[:50]
    again = HealthModel.load(trained_model_dir)
    np.testing.assert_allclose(trained_model.score_windows(flat)["health"], again.score_windows(flat)["health"],
                               rtol=1e-5)


def test_hysteresis_needs_consecutive_low_windows_to_enter_and_healthy_ones_to_leave():
    low = np.array([[1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0]], dtype=bool)
    alerts, _ = apply_hysteresis(low, enter_after=3, leave_after=4)
    assert alerts[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    # Carried state: a later call continues the streak instead of starting over.
    first, st = apply_hysteresis(np.array([[1, 1]], bool), 3, 4)
    second, _ = apply_hysteresis(np.array([[1]], bool), 3, 4, state=st)
    assert not first.any() and second.all()


def test_evaluation_reports_equal_recall_comparison(trained_model, heldout_fleet):
    n = 15  # half the held-out fleet keeps the threshold sweep quick
    fleet = dataclasses.replace(heldout_fleet, device_ids=heldout_fleet.device_ids[:n],
                                values=heldout_fleet.values[:n], alive=heldout_fleet.alive[:n],
                                labels=heldout_fleet.labels.iloc[:n].reset_index(drop=True))
    out = evaluate_fleet(trained_model, fleet, target_recall=0.8)
    assert "SYNTHETIC" in out["data"]
    for m in out["at_equal_recall"].values():
        assert 0.0 <= m["recall"] <= 1.0 and m["false_alarms"] >= 0 and m["healthy_device_days"] > 0
    assert out["faults"] == (fleet.labels.onset_ts >= 0).sum()
    assert set(out["window_auroc"]) == {"contrastive", "static_thresholds", "zscore", "zscore_device_profiles"}
