"""MONAI 3D UNet for nodule segmentation: DiceCE training on nodule-balanced patches, sliding-window
inference. Training runs single-process or under ``torchrun`` (DDP, gloo backend on CPU) unchanged:
the same ``dsv medical train`` command detects WORLD_SIZE, splits the cases across ranks, and lets
rank 0 write the checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    spacing_mm: float = 0.7
    """Isotropic analysis spacing: 0.7 mm keeps the scanners' 0.68-0.86 mm pixels (1 mm blurred 3 mm nodules
    to ~14 voxels)."""
    patch: int = 48
    """Patch edge in voxels (34 mm at 0.7 mm: a large nodule with lung around it)."""
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path
    out: Path
    iterations: int = 200
    samples_per_case: int = 2
    learning_rate: float = 2e-3
    seed: int = 0
    log_every: int = 10
    max_seconds: float | None = None
    """Training budget in seconds: the learning rate decays over whichever of ``iterations`` and this runs
    out first, and training stops (and saves) there. On a shared CPU the speed varies several-fold, so
    a schedule tied to the iteration count alone would stop with the rate still high."""
    checkpoint_every: int = 0
    """Also save every N iterations (0 = only at the end), so that a long run stopped early is usable."""
    attached_weight: float = 1.0
    """Centre patches on nodules that touch a vessel this many times more often than on free ones."""
    positive_mass: float = 0.5
    """Share of patches centred on a nodule."""
    hard_negative_mass: float = 0.3
    """Share centred on vessel-like voxels (hard negatives). Lowering it to 0.1 to favour recall did worse on
    every held-out figure (docs/benchmarks/medical.md run 9a)."""
    init_from: Path | None = None
    """Start from this checkpoint's weights (same ModelConfig): a second phase of training."""
    loss: str = "dice_ce"
    """A name in :data:`LOSSES`: Dice plus a voxel-wise term (cross-entropy, or focal)."""
    foreground_weight: float = 1.0
    """Weight of nodule voxels against background in the voxel-wise term. A small nodule the network has
    confidently missed gets almost no gradient from the Dice term (the softmax is saturated) and ~0.1 % of
    the voxel-wise mean, which vessel voxels outvote; weighting its voxels is the remedy tried in run 16."""
    model: ModelConfig = ModelConfig()


def _dice_ce(foreground_weight: float):
    """MONAI's DiceCELoss (softmax) with the class weight on the cross-entropy alone: ``DiceCELoss(weight=)``
    would also scale the nodule's Dice term, shifting the balance towards the term whose gradient vanishes
    on a confident miss. At weight 1 this is ``DiceCELoss(to_onehot_y=True, softmax=True)`` exactly."""
    import torch
    from monai.losses import DiceLoss

    dice = DiceLoss(to_onehot_y=True, softmax=True)
    ce = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, foreground_weight]))
    return lambda logits, label: dice(logits, label) + ce(logits, label[:, 0].long())


def _dice_focal(foreground_weight: float):
    """Dice plus softmax focal loss (gamma 2): the well-classified voxels, nearly all background, stop
    contributing, so the misclassified ones (missed nodules, vessels called nodule) carry the voxel term.
    MONAI's ``DiceFocalLoss`` uses a sigmoid focal term, which would not match the softmax used in
    inference, hence the two losses composed here."""
    from monai.losses import DiceLoss, FocalLoss

    dice = DiceLoss(to_onehot_y=True, softmax=True)
    alpha = foreground_weight / (1.0 + foreground_weight)  # MONAI: alpha for nodule voxels, 1 - alpha for background
    focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0, alpha=alpha)
    return lambda logits, label: dice(logits, label) + focal(logits, label)


LOSSES = {"dice_ce": _dice_ce, "dice_focal": _dice_focal}
"""Training losses by name; each factory takes the foreground weight and returns ``loss(logits, label)``."""


def build_network(cfg: ModelConfig):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=cfg.channels, strides=cfg.strides,
                num_res_units=cfg.num_res_units, norm="instance")


def load_case(case_dir: Path, native_label: bool = True) -> dict:
    """One synthetic case on its native grid: ``image`` (HU MetaTensor), ``nodules`` (the truth records)
    and, with ``native_label``, ``label`` (``truth/mask.npy`` as a MetaTensor)."""
    from .ingest import load_volume, scan_folder
    from .transforms import to_metatensor

    series, problems = scan_folder(case_dir / "dicom", lambda uid: "train")
    if len(series) != 1:
        raise ValueError(f"{case_dir}: expected one CT series, found {len(series)} ({[p.reason for p in problems]})")
    hu, problem = load_volume(series[0], "train")
    if problem:
        raise ValueError(f"{case_dir}: {problem.reason}")
    item = {"image": to_metatensor(hu, series[0].affine), "case": case_dir.name,
            "nodules": json.loads((case_dir / "truth" / "nodules.json").read_text())["nodules"]}
    if native_label:
        mask = np.load(case_dir / "truth" / "mask.npy")
        if mask.shape != hu.shape:
            raise ValueError(f"{case_dir}: truth mask shape {mask.shape} != volume {hu.shape}")
        item["label"] = to_metatensor(mask.astype(np.float32), series[0].affine)
    return item


def _case_dirs(data_dir: Path) -> list[Path]:
    cases = sorted(p.parent.parent for p in Path(data_dir).glob("*/truth/nodules.json"))
    if not cases:
        from shared.io import InputError

        raise InputError(f"{data_dir}: no synthetic cases (expected <case>/truth/nodules.json; run `dsv medical synth`)")
    return cases


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return dist.get_rank(), world
    return 0, 1


def train(cfg: TrainConfig) -> dict:
    import torch
    from monai.data import CacheDataset, DataLoader, partition_dataset
    from monai.utils import set_determinism
    from tqdm import tqdm

    from shared.io import InputError

    from .transforms import LoadSyntheticCased, training_transforms

    if cfg.loss not in LOSSES:
        raise InputError(f"loss {cfg.loss!r}: not one of {sorted(LOSSES)}")
    torch.set_num_threads(1)
    rank, world = _distributed()
    set_determinism(cfg.seed + rank)
    cases = _case_dirs(cfg.data_dir)
    mine = partition_dataset(cases, num_partitions=world, shuffle=True, seed=cfg.seed, even_divisible=True)[rank] if world > 1 else cases
    # Items are paths, loaded inside the cached part of the pipeline: CacheDataset keeps its inputs,
    # and native HU volumes of 200 cases would cost ~0.8 GB on top of the cache.
    ds = CacheDataset([{"case_dir": str(c)} for c in mine],
                      transform=training_transforms(cfg.model.spacing_mm, cfg.model.patch, cfg.samples_per_case,
                                                    load=(LoadSyntheticCased(),), attached_weight=cfg.attached_weight,
                                                    positive_mass=cfg.positive_mass,
                                                    hard_negative_mass=cfg.hard_negative_mass),
                      cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(ds, batch_size=1, shuffle=True, num_workers=0)
    net = build_network(cfg.model)
    if cfg.init_from is not None:
        start_ckpt = read_checkpoint(cfg.init_from)
        if ENSEMBLE_KEY in start_ckpt:
            raise InputError(f"{cfg.init_from}: an ensemble of networks; start from one of its members")
        start, start_cfg = network_from_checkpoint(start_ckpt)
        if start_cfg != cfg.model:
            raise InputError(f"{cfg.init_from}: its network {asdict(start_cfg)} differs from the requested {asdict(cfg.model)}")
        net.load_state_dict(start.state_dict())
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net)
    loss_fn = LOSSES[cfg.loss](cfg.foreground_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-5)
    losses: list[float] = []
    step_times: list[float] = []
    it = 0
    bar = tqdm(total=cfg.iterations, desc=f"train rank {rank}", disable=rank != 0)
    model.train()
    started = time.perf_counter()
    stop = False
    while it < cfg.iterations and not stop:
        for batch in loader:
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            step_times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
            it += 1
            bar.update(1)
            progress = _progress(it, cfg, time.perf_counter() - started, world)
            for group in opt.param_groups:  # cosine decay over the budget's used share
                group["lr"] = cfg.learning_rate * 0.5 * (1.0 + np.cos(np.pi * min(progress, 1.0)))
            if it % cfg.log_every == 0 and rank == 0:
                log.info("iteration %d/%d loss %.4f (%.2f s/it, %.0f%% of the budget)", it, cfg.iterations,
                         float(np.mean(losses[-cfg.log_every:])), float(np.mean(step_times[-cfg.log_every:])), 100 * progress)
            if rank == 0 and cfg.checkpoint_every and it % cfg.checkpoint_every == 0 and it < cfg.iterations:
                save_checkpoint(cfg.out, net, cfg.model, _summary(it, cfg, world, len(mine), step_times, losses, started, partial=True))
            if progress >= 1.0:
                if it < cfg.iterations:
                    log.warning("time budget of %.0f s reached after %d iterations: stopping", cfg.max_seconds, it)
                stop = True
                break
    bar.close()
    summary = _summary(it, cfg, world, len(mine), step_times, losses, started, partial=False)
    if rank == 0:
        save_checkpoint(cfg.out, net, cfg.model, summary)
    if world > 1:
        import torch.distributed as dist

        # Free the DDP wrapper while the process group is still registered. Otherwise its Reducer holds
        # the last reference to the group, whose destructor then runs when this frame returns, with the
        # GIL held, and joins a gloo worker thread that is waiting for the GIL: a deadlock seen in CI.
        del model
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _progress(it: int, cfg: TrainConfig, elapsed_s: float, world: int) -> float:
    """Share of the training budget used: iterations or seconds, whichever is further along. Under DDP
    the ranks take the maximum, so that they keep one learning rate and stop at the same step."""
    progress = it / max(1, cfg.iterations)
    if cfg.max_seconds:
        progress = max(progress, elapsed_s / cfg.max_seconds)
    if world > 1:
        import torch
        import torch.distributed as dist

        shared = torch.tensor([progress], dtype=torch.float64)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        progress = float(shared[0])
    return progress


def _summary(it: int, cfg: TrainConfig, world: int, n_cases: int, step_times: list[float], losses: list[float],
             started: float, partial: bool) -> dict:
    # The recipe travels with the weights, so a checkpoint says how it was made without the command line:
    # every TrainConfig field but where it is written, logging, and the network (saved as model_config).
    recipe = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()
              if k not in ("out", "log_every", "checkpoint_every", "model")}
    return {"iterations": it, "recipe": recipe, "world_size": world, "cases_per_rank": n_cases, "partial": partial,
            "seconds_per_iteration": round(float(np.median(step_times)), 4),
            "wall_seconds": round(time.perf_counter() - started, 1),
            "first_loss": round(losses[0], 4), "last_loss": round(float(np.mean(losses[-10:])), 4)}


def save_checkpoint(path: Path, net, model_cfg: ModelConfig, summary: dict) -> None:
    import torch

    from shared.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"state_dict": net.state_dict(), "model_config": asdict(model_cfg), "summary": summary}, tmp)
    Path(path).with_suffix(".json").write_text(json.dumps({"model_config": asdict(model_cfg), **summary}, indent=1))


def update_checkpoint(path: Path, **entries) -> None:
    """Add entries (a second stage, a validated operating point) to a trained checkpoint, atomically;
    the JSON beside it records them too (tensors excepted)."""
    import torch

    from shared.io import atomic_path, write_text_atomic

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt.update(entries)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    meta_path = Path(path).with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    readable = {k: v for k, v in entries.items() if not k.endswith("state_dict")}
    write_text_atomic(meta_path, json.dumps(meta | readable, indent=1))


def checkpoint_entry(path: Path, key: str):
    """One entry of a checkpoint; memory-mapped, so that asking whether a second stage is there does not
    read the whole first stage's weights."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(key)


def read_checkpoint(path: Path) -> dict:
    """The whole checkpoint (first stage, and any second stage and settings recorded with it)."""
    import torch

    from shared.io import InputError

    if not Path(path).exists():
        raise InputError(f"{path}: model checkpoint not found (train one with `dsv medical train`)")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint(path: Path):
    return network_from_checkpoint(read_checkpoint(path))


def network_from_checkpoint(ckpt: dict):
    """The first-stage network (eval mode) and its config from a checkpoint already read; for an ensemble
    checkpoint (:func:`combine_checkpoints`), its members behind one module that gives their mean probability."""
    raw = ckpt["model_config"]
    cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    nets = []
    for state in [ckpt["state_dict"], *ckpt.get(ENSEMBLE_KEY, [])]:
        net = build_network(cfg)
        net.load_state_dict(state)
        nets.append(net.eval())
    return (nets[0] if len(nets) == 1 else _mean_probability_network(nets)), cfg


ENSEMBLE_KEY = "member_state_dicts"
"""Checkpoint entry holding the ensemble's networks after the first (which stays in ``state_dict``)."""


def _mean_probability_network(nets: list):
    """Several first-stage networks as one module: its output is the log of their mean softmax, so the
    softmax that :func:`predict_probability` applies gives the mean probability back. (Sliding-window
    blending then mixes log-probabilities, as it mixes a single network's logits.)"""
    import torch

    class MeanProbability(torch.nn.Module):
        def __init__(self, members):
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, x):
            mean = torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(0)
            return torch.log(mean.clamp_min(1e-7))

    return MeanProbability(nets).eval()


def combine_checkpoints(paths: list[Path], out: Path) -> dict:
    """One first-stage checkpoint whose probability map is the mean of several trained networks' (same
    network config). Any second stage of the members is left out: a classifier is trained on the probability
    maps it will judge, so ``dsv medical train-fpr`` is run on the ensemble."""
    import torch

    from shared.io import InputError, atomic_path, write_text_atomic

    if len(paths) < 2:
        raise InputError("an ensemble needs at least two checkpoints")
    members = [read_checkpoint(p) for p in paths]
    for path, ckpt in zip(paths, members):
        if ENSEMBLE_KEY in ckpt:
            raise InputError(f"{path}: already an ensemble; list its members instead")
        if ckpt["model_config"] != members[0]["model_config"]:
            raise InputError(f"{path}: its network {ckpt['model_config']} differs from {paths[0]}'s "
                             f"{members[0]['model_config']}")
    summary = {"ensemble_of": [{"path": str(p), **ckpt.get("summary", {})} for p, ckpt in zip(paths, members)]}
    with atomic_path(out) as tmp:
        torch.save({"state_dict": members[0]["state_dict"], ENSEMBLE_KEY: [m["state_dict"] for m in members[1:]],
                    "model_config": members[0]["model_config"], "summary": summary}, tmp)
    write_text_atomic(Path(out).with_suffix(".json"),
                      json.dumps({"model_config": members[0]["model_config"], **summary}, indent=1))
    return {"model": str(out), "members": [str(p) for p in paths]}


def predict_probability(net, image_scaled, cfg: ModelConfig, flip_tta: bool = False):
    """Nodule probability on the canonical grid (sliding window, Gaussian-weighted overlaps).

    ``flip_tta`` also runs the volume mirrored along each axis and averages the four probability maps:
    a small nodule that one view scores just under the candidate threshold may pass in the mean (4x the
    time; measured in docs/benchmarks/medical.md)."""
    import torch
    from monai.inferers import sliding_window_inference

    volume = image_scaled.as_tensor()[None] if hasattr(image_scaled, "as_tensor") else image_scaled[None]
    views = [()] + ([(2,), (3,), (4,)] if flip_tta else [])
    total = None
    with torch.no_grad():
        for axes in views:
            x = torch.flip(volume, axes) if axes else volume
            logits = sliding_window_inference(x, roi_size=(cfg.patch,) * 3, sw_batch_size=4, predictor=net,
                                              overlap=0.25, mode="gaussian")
            prob = torch.softmax(logits, dim=1)[:, 1:2]
            prob = torch.flip(prob, axes) if axes else prob
            total = prob if total is None else total + prob
        return (total / len(views))[0, 0].numpy()
