"""End to end: train the health model from normal windows, save / load it, and score records."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shared.io import InputError, atomic_path

from .data import REGIME_SENSORS, SENSORS
from .model import EncoderConfig, TrainConfig, build_encoder, embed, train_encoder
from .scoring import (
    HEALTH_ALERT_BELOW,
    Calibration,
    HysteresisState,
    apply_hysteresis,
    calibrate,
    contributing_sensors,
    knn_distance,
)
from .windows import MIN_OBSERVED, RegimeNormalizer, observed_fraction, sliding_windows, to_grid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    sensors: tuple[str, ...] = SENSORS
    regime_sensors: tuple[str, ...] = REGIME_SENSORS
    period_s: int = 300
    """Sampling period of the grid the records are snapped to (5 minutes)."""
    window: int = 24
    """Samples per window (2 hours at 5 minutes)."""
    stride: int = 3
    """Samples between consecutive windows (15 minutes: one scoring cycle)."""
    n_regimes: int = 4
    reference_size: int = 2048
    knn_k: int = 10
    alert_below: float = HEALTH_ALERT_BELOW
    enter_after: int = 3
    leave_after: int = 4
    max_train_windows: int = 60_000
    train: TrainConfig = field(default_factory=TrainConfig)
    encoder: dict = field(default_factory=dict)
    """Overrides of ``EncoderConfig`` fields (d_model, n_layers...)."""


class HealthModel:
    """Normaliser + encoder + normal reference embeddings + calibration: everything scoring needs."""

    def __init__(self, cfg: PipelineConfig, normalizer: RegimeNormalizer, encoder, reference: np.ndarray,
                 calibration: Calibration, info: dict | None = None):
        self.cfg, self.normalizer, self.encoder = cfg, normalizer, encoder
        self.reference, self.calibration, self.info = reference, calibration, info or {}

    # ------------------------------------------------------------------------------ scoring
    def distances(self, raw_windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw windows (M, W, S) -> (distance (M,), normalised windows (M, W, S))."""
        z = self.normalizer.transform(raw_windows)
        emb = embed(self.encoder, z)
        return knn_distance(emb, self.reference, self.calibration.k), z

    def score_windows(self, raw_windows: np.ndarray) -> dict:
        dist, z = self.distances(raw_windows)
        return {"distance": dist, "health": self.calibration.health(dist), "z": z,
                "valid": observed_fraction(raw_windows) >= MIN_OBSERVED}

    # ------------------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        import torch

        path = Path(path)
        with atomic_path(path, is_dir=True) as tmp:
            torch.save(self.encoder.state_dict(), tmp / "encoder.pt")
            st = self.normalizer.state()
            np.savez(tmp / "normalizer.npz", **{k: (np.asarray(v) if v is not None else np.array([]))
                                                for k, v in st.items()})
            np.save(tmp / "reference.npy", self.reference)
            meta = {"pipeline": _cfg_to_dict(self.cfg), "encoder": asdict(self.encoder.cfg),
                    "calibration": asdict(self.calibration), "info": self.info}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> HealthModel:
        import torch

        path = Path(path)
        if not (path / "meta.json").exists():
            raise InputError(f"{path}: no trained manufacturing model here (run `dsv manufacturing train`)")
        meta = json.loads((path / "meta.json").read_text())
        cfg = _cfg_from_dict(meta["pipeline"])
        encoder = build_encoder(EncoderConfig(**meta["encoder"]))
        encoder.load_state_dict(torch.load(path / "encoder.pt", weights_only=True))
        encoder.eval()
        raw = np.load(path / "normalizer.npz")
        st = {k: raw[k] for k in raw.files}
        st["sensors"] = [str(s) for s in st["sensors"]]
        st["regime_idx"] = [int(i) for i in st["regime_idx"]]
        st["n_regimes"] = int(st["n_regimes"])
        st["centers"] = st["centers"] if st["centers"].size else None
        return cls(cfg, RegimeNormalizer.from_state(st), encoder, np.load(path / "reference.npy"),
                   Calibration(**meta["calibration"]), meta.get("info", {}))


def _cfg_to_dict(cfg: PipelineConfig) -> dict:
    d = asdict(cfg)
    d["sensors"], d["regime_sensors"] = list(cfg.sensors), list(cfg.regime_sensors)
    return d


def _cfg_from_dict(d: dict) -> PipelineConfig:
    d = dict(d)
    d["train"] = TrainConfig(**d["train"])
    d["sensors"], d["regime_sensors"] = tuple(d["sensors"]), tuple(d["regime_sensors"])
    return PipelineConfig(**d)


def train_health_model(normal_windows: np.ndarray, cfg: PipelineConfig, progress: bool = True) -> HealthModel:
    """Fit on raw windows (M, W, S) from normal operation: normaliser, encoder (contrastive), a
    reference bank of normal embeddings, and the 0-100 calibration on held-out normal windows."""
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.train.seed)
    windows = normal_windows[observed_fraction(normal_windows) >= MIN_OBSERVED]
    if len(windows) < 50:
        raise InputError(f"only {len(windows)} usable normal windows: need at least 50 to train")
    windows = windows[rng.permutation(len(windows))[: cfg.max_train_windows + 20_000]]
    n_cal = max(20, min(20_000, len(windows) // 5))
    cal_raw, train_raw = windows[:n_cal], windows[n_cal:]
    samples = train_raw.reshape(-1, train_raw.shape[-1])
    samples = samples[rng.permutation(len(samples))[:200_000]]
    normalizer = RegimeNormalizer(cfg.sensors, cfg.regime_sensors, cfg.n_regimes, cfg.train.seed).fit(samples)
    z_train = normalizer.transform(train_raw)
    enc_cfg = EncoderConfig(n_sensors=len(cfg.sensors), window=cfg.window, **cfg.encoder)
    encoder, losses = train_encoder(z_train, enc_cfg, cfg.train, progress=progress)
    ref_idx = rng.permutation(len(z_train))[: cfg.reference_size]
    reference = embed(encoder, z_train[ref_idx])
    cal_dist = knn_distance(embed(encoder, normalizer.transform(cal_raw)), reference, cfg.knn_k)
    calibration = calibrate(cal_dist, cfg.knn_k)
    info = {"train_windows": len(z_train), "calibration_windows": int(n_cal),
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
            "train_seconds": round(time.perf_counter() - start, 1)}
    log.info("health model trained: %s", info)
    return HealthModel(cfg, normalizer, encoder, reference, calibration, info)


def normal_windows_from_grid(values: np.ndarray, grid_ts: np.ndarray, cfg: PipelineConfig,
                             onset_ts: np.ndarray | None = None) -> np.ndarray:
    """All windows of a (N, T, S) grid, flattened to (M, W, S), keeping only those that end before
    the device's fault onset (``onset_ts`` -1, or no labels at all = healthy throughout)."""
    win, ends = sliding_windows(values, cfg.window, cfg.stride)
    keep = np.ones(win.shape[:2], bool)
    if onset_ts is not None:
        end_ts = grid_ts[ends]
        keep = (onset_ts[:, None] < 0) | (end_ts[None, :] < onset_ts[:, None])
    return win[keep]


def score_frame(model: HealthModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Score validated records: one row per device per window (window end = ``ts``), with hysteresis
    applied along each device's windows. Windows with too little data are left out."""
    cfg = model.cfg
    grid = to_grid(frame, cfg.sensors, cfg.period_s)
    win, ends = sliding_windows(grid.values, cfg.window, cfg.stride)
    n_dev, n_win = win.shape[:2]
    cols = ["device_id", "ts", "health", "alert", "contributing_sensors"]
    if n_win == 0:
        return pd.DataFrame(columns=cols)
    flat = win.reshape(-1, cfg.window, len(cfg.sensors))
    res = model.score_windows(flat)
    health = res["health"].reshape(n_dev, n_win)
    valid = res["valid"].reshape(n_dev, n_win)
    low = health < cfg.alert_below
    alerts, _ = apply_hysteresis(low, cfg.enter_after, cfg.leave_after, HysteresisState.fresh(n_dev), valid)
    keep = valid.reshape(-1)
    contrib = contributing_sensors(res["z"][keep], cfg.sensors)
    dev_idx = np.repeat(np.arange(n_dev), n_win)[keep]
    end_ts = np.tile(grid.ts[ends], n_dev)[keep]
    return pd.DataFrame({
        "device_id": grid.device_ids[dev_idx],
        "ts": pd.to_datetime(end_ts, unit="s", utc=True).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "health": np.round(health.reshape(-1)[keep], 1),
        "alert": alerts.reshape(-1)[keep],
        "contributing_sensors": contrib,
    })


def default_model_dir(settings) -> Path:
    return settings.app_dir("manufacturing") / "model"
