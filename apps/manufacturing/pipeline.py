"""End to end: train the health model from normal windows, save / load it, and score records."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from shared.io import InputError, atomic_path

from .data import REGIME_SENSORS, SENSORS
from .model import EncoderConfig, TrainConfig, build_encoder, embed, train_encoder
from .profiles import ProfileConfig, causal_offsets, correct, fit_scale
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
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    """Per-device profiles (``profiles.py``): each machine judged against its own first day."""


@dataclass
class NormalWindows:
    """Windows of normal operation together with where they come from, so that each can be judged
    against its own device's profile: ``grid`` (N, T, S) raw device histories, ``device`` (M,) and
    ``end`` (M,) the device row and end step of every window."""

    grid: np.ndarray
    device: np.ndarray
    end: np.ndarray
    window: int

    def raw(self, idx: np.ndarray | None = None) -> np.ndarray:
        dev, end = (self.device, self.end) if idx is None else (self.device[idx], self.end[idx])
        steps = end[:, None] + np.arange(1 - self.window, 1)[None, :]
        return self.grid[dev[:, None], steps]


class HealthModel:
    """Normaliser + encoder + normal reference embeddings + calibration: everything scoring needs."""

    def __init__(self, cfg: PipelineConfig, normalizer: RegimeNormalizer, encoder, reference: np.ndarray,
                 calibration: Calibration, info: dict | None = None, profile_scale: np.ndarray | None = None):
        self.cfg, self.normalizer, self.encoder = cfg, normalizer, encoder
        self.reference, self.calibration, self.info = reference, calibration, info or {}
        self.profile_scale = profile_scale
        """Within-machine spread (R, S) per regime and sensor; None = no per-device profiles."""

    @property
    def uses_profiles(self) -> bool:
        return self.profile_scale is not None and self.cfg.profile.steps > 0

    # ------------------------------------------------------------------------------ scoring
    def normalise(self, raw_windows: np.ndarray, profiles: np.ndarray | None = None) -> dict:
        """Raw windows (M, W, S) -> ``z`` (fleet per-regime z-scores), ``regimes`` (M, W) and
        ``z_device`` (what the encoder sees: the deviation from the device's own profile when
        ``profiles`` (M, 2, R, S) is given and the model uses them, else ``z`` itself)."""
        regimes = self.normalizer.regimes(raw_windows)
        z = self.normalizer.transform(raw_windows, regimes=regimes)
        z_device = z
        if self.uses_profiles:
            if profiles is None:   # a device seen for the first time: no profile yet
                profiles = np.zeros((len(z), 2, *self.profile_scale.shape), np.float32)
                profiles[:, 1] = 1.0
            z_device = correct(z, regimes, ~np.isnan(raw_windows), profiles, self.profile_scale)
        return {"z": z, "regimes": regimes, "z_device": z_device}

    def distances(self, raw_windows: np.ndarray, profiles: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """Raw windows (M, W, S) -> (distance (M,), the ``normalise`` output)."""
        norm = self.normalise(raw_windows, profiles)
        emb = embed(self.encoder, norm["z_device"])
        return knn_distance(emb, self.reference, self.calibration.k), norm

    def score_windows(self, raw_windows: np.ndarray, profiles: np.ndarray | None = None) -> dict:
        """``profiles``: each window's device profile (``device_profiles``) or None."""
        dist, norm = self.distances(raw_windows, profiles)
        return {"distance": dist, "health": self.calibration.health(dist), **norm,
                "valid": observed_fraction(raw_windows) >= MIN_OBSERVED}

    def device_profiles(self, values: np.ndarray, ends: np.ndarray) -> np.ndarray | None:
        """Device histories (N, T, S) -> each device's profile at each window end step (N, K, 2, R, S),
        causal (see ``profiles.py``); None when the model does not use profiles."""
        if self.cfg.profile.steps <= 0:
            return None
        regimes = self.normalizer.regimes(values)
        z = self.normalizer.transform(values, regimes=regimes)
        return causal_offsets(z, regimes, ~np.isnan(values), ends, self.normalizer.n_regimes, self.cfg.profile)

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
            if self.profile_scale is not None:
                np.save(tmp / "profile_scale.npy", self.profile_scale)
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
        scale = np.load(path / "profile_scale.npy") if (path / "profile_scale.npy").exists() else None
        return cls(cfg, RegimeNormalizer.from_state(st), encoder, np.load(path / "reference.npy"),
                   Calibration(**meta["calibration"]), meta.get("info", {}), scale)


def _cfg_to_dict(cfg: PipelineConfig) -> dict:
    d = asdict(cfg)
    d["sensors"], d["regime_sensors"] = list(cfg.sensors), list(cfg.regime_sensors)
    return d


def _cfg_from_dict(d: dict) -> PipelineConfig:
    d = dict(d)
    d["train"] = TrainConfig(**d["train"])
    # A model saved before per-device profiles existed was trained without them.
    d["profile"] = ProfileConfig(**d["profile"]) if "profile" in d else ProfileConfig(steps=0)
    d["sensors"], d["regime_sensors"] = tuple(d["sensors"]), tuple(d["regime_sensors"])
    return PipelineConfig(**d)


def train_health_model(normal: NormalWindows | np.ndarray, cfg: PipelineConfig, progress: bool = True) -> HealthModel:
    """Fit on windows from normal operation: normaliser, per-device profiles (when ``normal`` says
    which device each window comes from), encoder (contrastive), a reference bank of normal
    embeddings, and the 0-100 calibration on held-out normal windows. A plain array (M, W, S) of
    windows (e.g. the Shuttle rows, which have no devices) trains without profiles."""
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.train.seed)
    if not isinstance(normal, NormalWindows):
        normal = NormalWindows(np.asarray(normal), np.arange(len(normal)), np.full(len(normal), normal.shape[1] - 1),
                               normal.shape[1])
        cfg = replace(cfg, profile=replace(cfg.profile, steps=0))
    usable = np.flatnonzero(observed_fraction(normal.raw()) >= MIN_OBSERVED)
    if len(usable) < 50:
        raise InputError(f"only {len(usable)} usable normal windows: need at least 50 to train")
    usable = usable[rng.permutation(len(usable))[: cfg.max_train_windows + 20_000]]
    n_cal = max(20, min(20_000, len(usable) // 5))
    cal_idx, train_idx = usable[:n_cal], usable[n_cal:]
    train_raw, cal_raw = normal.raw(train_idx), normal.raw(cal_idx)
    samples = train_raw.reshape(-1, train_raw.shape[-1])
    samples = samples[rng.permutation(len(samples))[:200_000]]
    normalizer = RegimeNormalizer(cfg.sensors, cfg.regime_sensors, cfg.n_regimes, cfg.train.seed).fit(samples)
    model = HealthModel(cfg, normalizer, None, np.empty((0, 0), np.float32), Calibration(0.0, 1.0, cfg.knn_k))
    train_prof = cal_prof = None
    if cfg.profile.steps > 0:
        prof = model.device_profiles(normal.grid, np.arange(normal.grid.shape[1]))   # (N, T, 2, R, S)
        train_prof = prof[normal.device[train_idx], normal.end[train_idx]]
        cal_prof = prof[normal.device[cal_idx], normal.end[cal_idx]]
        regimes = normalizer.regimes(train_raw)
        model.profile_scale = fit_scale(normalizer.transform(train_raw, regimes=regimes), regimes,
                                        ~np.isnan(train_raw), train_prof[:, 0], normalizer.n_regimes)
    z_train = model.normalise(train_raw, train_prof)["z_device"]
    enc_cfg = EncoderConfig(n_sensors=len(cfg.sensors), window=cfg.window, **cfg.encoder)
    encoder, losses = train_encoder(z_train, enc_cfg, cfg.train, progress=progress)
    ref_idx = rng.permutation(len(z_train))[: cfg.reference_size]
    reference = embed(encoder, z_train[ref_idx])
    cal_dist = knn_distance(embed(encoder, model.normalise(cal_raw, cal_prof)["z_device"]), reference, cfg.knn_k)
    calibration = calibrate(cal_dist, cfg.knn_k)
    info = {"train_windows": len(z_train), "calibration_windows": int(n_cal),
            "per_device_profiles": model.uses_profiles,
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:])),
            "train_seconds": round(time.perf_counter() - start, 1)}
    log.info("health model trained: %s", info)
    return HealthModel(cfg, normalizer, encoder, reference, calibration, info, model.profile_scale)


def normal_windows_from_grid(values: np.ndarray, grid_ts: np.ndarray, cfg: PipelineConfig,
                             onset_ts: np.ndarray | None = None) -> NormalWindows:
    """All windows of a (N, T, S) grid that end before the device's fault onset (``onset_ts`` -1,
    or no labels at all = healthy throughout), with their device and end step."""
    win, ends = sliding_windows(values, cfg.window, cfg.stride)
    keep = np.ones(win.shape[:2], bool)
    if onset_ts is not None:
        end_ts = grid_ts[ends]
        keep = (onset_ts[:, None] < 0) | (end_ts[None, :] < onset_ts[:, None])
    device, k = np.nonzero(keep)
    return NormalWindows(values, device, ends[k], cfg.window)


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
    profiles = model.device_profiles(grid.values, ends)
    res = model.score_windows(flat, None if profiles is None else profiles.reshape(-1, *profiles.shape[2:]))
    health = res["health"].reshape(n_dev, n_win)
    valid = res["valid"].reshape(n_dev, n_win)
    low = health < cfg.alert_below
    alerts, _ = apply_hysteresis(low, cfg.enter_after, cfg.leave_after, HysteresisState.fresh(n_dev), valid)
    keep = valid.reshape(-1)
    contrib = contributing_sensors(res["z_device"][keep], cfg.sensors)
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
