"""Second stage: false-positive reduction on candidate patches, as the LUNA16 pipelines do.

The segmentation network proposes candidates (connected components of p > 0.2); the false positives
that survive it are vessel pieces and crossings whose probability is as high as a nodule's, so no
threshold on the probability map separates them. A small MONAI ``Classifier`` looks again at a patch
around each candidate centre, with two channels: the scaled CT and the segmentation probability (the
second tells it which structure the first stage meant); optionally a second, coarser view of the same two
around the same centre (``context``), as the multi-level contextual networks of LUNA16 did (Dou et al.,
IEEE TBME 2017). Its probability becomes the finding's score.

It is trained on cases the segmentation network has never seen (``dsv medical synth`` with another
seed): on its own training cases the first stage is overconfident and makes fewer false positives
than on new scans, which would teach the classifier the wrong mix. Positives are the candidates that
hit a true nodule plus the true nodule centres themselves; negatives are all other candidates. The
classifier is stored inside the segmentation checkpoint (it is only valid for that first stage).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .postprocess import PostprocessConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateClassifierConfig:
    patch: int = 32
    """Patch edge in analysis voxels (22 mm at 0.7 mm: a 3-10 mm nodule with its surroundings)."""
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1
    context: int = 1
    """Edge of a second view as a multiple of the patch, averaged back down to the patch's size: 2 adds a
    44 mm cube at 1.4 mm (the vessel tree a 22 mm patch cuts off: a junction and a small nodule look alike
    inside 22 mm, not inside 44). 1 = the fine view only (checkpoints written before this field)."""

    @property
    def in_channels(self) -> int:
        return 2 if self.context == 1 else 4

    def __post_init__(self):
        if self.context < 1:
            raise ValueError(f"context: a positive integer multiple of the patch, not {self.context}")


@dataclass(frozen=True)
class FprTrainConfig:
    data_dir: Path
    """Synthetic cases not used to train the segmentation network."""
    model_path: Path
    """Segmentation checkpoint; the classifier is written into it."""
    iterations: int = 2000
    batch: int = 16
    learning_rate: float = 1e-3
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    """The candidates: the pipeline's findings before the score cut (:func:`candidate_config`)."""
    match_slack_mm: float = 1.0
    jitter_voxels: int = 2
    vessel_negatives_per_case: int = 4
    """Extra negatives centred on random vessel-like voxels: the structures the first stage confuses
    with nodules, including ones it happens not to flag on these particular cases."""
    seed: int = 0
    max_seconds: float | None = None
    flip_tta: bool = False
    """First stage averaged over the volume and its mirror images (``predict_probability``). Recorded in
    the checkpoint with the classifier: it learns on these maps, so the pipeline must compute the same."""
    blob_min_response: float | None = None
    """Also train on (and, recorded in the checkpoint, later judge) the Hessian dot filter's blob
    candidates at this response (``blobs.py``): nodules against a vessel that the first stage misses."""
    probability_dropout: float = 0.0
    """Fraction of training patches whose probability channel is blanked, whatever their label: blob
    candidates come with a ~0 probability, and without this the classifier learns that ~0 means "not a
    nodule" from the network's own candidates, instead of judging the CT (run 12)."""
    ensemble: int = 1
    """Classifiers trained on the same patches from seeds ``seed``, ``seed + 1``, ...; the pipeline averages
    their probabilities. One classifier's rank of the hard candidates moves with its seed (run 12: CPM
    0.890 / 0.875 / 0.878 over three seeds); the mean of several moves less."""
    classifier: CandidateClassifierConfig = field(default_factory=CandidateClassifierConfig)

    def __post_init__(self):
        if self.ensemble < 1:
            raise ValueError(f"ensemble: at least one classifier, not {self.ensemble}")


def build_classifier(cfg: CandidateClassifierConfig):
    from monai.networks.nets import Classifier

    return Classifier(in_shape=(cfg.in_channels,) + (cfg.patch,) * 3, classes=1, channels=cfg.channels,
                      strides=cfg.strides, num_res_units=cfg.num_res_units)


def candidate_patches(scaled: np.ndarray, prob: np.ndarray, centres_vox: np.ndarray, patch: int,
                      context: int = 1) -> np.ndarray:
    """(N, C, patch, patch, patch) float32, zero outside the volume: the scaled CT and the probability
    around each centre (C = 2), then with ``context`` > 1 the same over a ``context`` times larger cube,
    averaged over ``context``^3 blocks (C = 4). Both views share their centre, so flips and quarter turns
    about the patch centre keep them aligned."""
    half = patch // 2 * context
    pad = [(half, half)] * 3
    image, p = np.pad(scaled, pad), np.pad(prob, pad)
    views = [(1, 0)] if context == 1 else [(1, 0), (context, 2)]
    out = np.zeros((len(centres_vox), 2 * len(views)) + (patch,) * 3, dtype=np.float32)
    for i, c in enumerate(np.asarray(centres_vox, dtype=int)):
        c = np.clip(c, 0, np.array(scaled.shape) - 1) + half  # the centre in padded coordinates
        for k, channel in views:
            box = tuple(slice(int(v) - patch // 2 * k, int(v) - patch // 2 * k + patch * k) for v in c)
            out[i, channel], out[i, channel + 1] = _block_mean(image[box], k), _block_mean(p[box], k)
    return out


def _block_mean(x: np.ndarray, k: int) -> np.ndarray:
    if k == 1:
        return x
    n = x.shape[0] // k
    return x.reshape(n, k, n, k, n, k).mean(axis=(1, 3, 5))


def _to_voxels(points_mm, affine: np.ndarray) -> np.ndarray:
    pts = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    return np.rint((np.c_[pts, np.ones(len(pts))] @ np.linalg.inv(affine).T)[:, :3]).astype(int)


class CandidateClassifier:
    """Trained classifiers (one, or an ensemble) bound to their config; ``rescore`` sets each finding's
    score to their mean probability."""

    def __init__(self, nets: list, cfg: CandidateClassifierConfig):
        self.nets, self.cfg = nets, cfg

    def probabilities(self, scaled: np.ndarray, prob: np.ndarray, centres_vox: np.ndarray, batch: int = 32) -> np.ndarray:
        import torch

        if len(centres_vox) == 0:
            return np.zeros(0)
        patches = torch.as_tensor(candidate_patches(scaled, prob, centres_vox, self.cfg.patch, self.cfg.context))
        with torch.no_grad():
            logits = [torch.cat([net(patches[i:i + batch]) for i in range(0, len(patches), batch)])[:, 0]
                      for net in self.nets]
        # float64: a float32 sigmoid saturates at 1.0 from logit ~17, and ties at 1.0 blur the FROC's top end
        return torch.sigmoid(torch.stack(logits).double()).mean(0).numpy()

    def rescore(self, findings, scaled, prob: np.ndarray, affine: np.ndarray) -> None:
        scaled = np.asarray(scaled.numpy()[0] if hasattr(scaled, "numpy") and scaled.ndim == 4 else scaled)
        p = self.probabilities(scaled, prob, _to_voxels([f.center_mm for f in findings], affine))
        for f, v in zip(findings, p):
            f.classifier_probability = f.score = float(v)


def load_classifier(path: Path) -> CandidateClassifier | None:
    """The classifier stored in a segmentation checkpoint, or None if it has none."""
    import torch

    return classifier_from_checkpoint(torch.load(path, map_location="cpu", weights_only=True))


def classifier_from_checkpoint(ckpt: dict) -> CandidateClassifier | None:
    """``load_classifier`` on a checkpoint already read (the detector reads it once for all its parts).
    ``classifier_state_dict`` holds one state dict, or a list of them for an ensemble."""
    states = ckpt.get("classifier_state_dict")
    if states is None:
        return None
    raw = ckpt["classifier_config"]
    cfg = CandidateClassifierConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    nets = []
    for state in states if isinstance(states, list) else [states]:
        net = build_classifier(cfg)
        net.load_state_dict(state)
        nets.append(net.eval())
    return CandidateClassifier(nets, cfg)


def collect_case(detector, case_dir: Path, cfg: FprTrainConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """Candidate patches of one case (first stage run as at inference) with labels 1 = nodule, 0 = not."""
    from .evaluation import match_candidates
    from .model import load_case
    from .postprocess import candidate_config

    item = load_case(case_dir, native_label=False)
    shape = tuple(item["image"].shape[1:])
    native_affine = np.asarray(item["image"].affine, dtype=float)
    hu_c, scaled = detector.canonical(item["image"][0].numpy(), native_affine)
    affine = np.asarray(hu_c.affine, dtype=float)
    prob = detector.probability(scaled)
    candidates, _ = detector.findings(prob, hu_c, scaled, native_affine, shape, list(range(1, shape[2] + 1)),
                                      candidate_config(cfg.postprocess))
    hits = match_candidates(candidates, item["nodules"], cfg.match_slack_mm)
    positive = set().union(*hits) if hits else set()
    centres_vox = [_to_voxels([f.center_mm for f in candidates] + [n["center_mm"] for n in item["nodules"]], affine)]
    labels = [1.0 if i in positive else 0.0 for i in range(len(candidates))] + [1.0] * len(item["nodules"])
    vessels = _vessel_voxels(scaled, item["nodules"], detector.model_cfg.spacing_mm)
    if len(vessels) and cfg.vessel_negatives_per_case:
        rng = np.random.default_rng([cfg.seed, len(candidates), len(vessels)])
        picked = vessels[rng.choice(len(vessels), min(cfg.vessel_negatives_per_case, len(vessels)), replace=False)]
        centres_vox.append(np.stack(np.unravel_index(picked, scaled.shape[1:]), -1))
        labels += [0.0] * len(picked)
    margin = cfg.jitter_voxels  # cut larger patches so that training can shift them
    patches = candidate_patches(scaled.numpy()[0], prob, np.concatenate(centres_vox), cfg.classifier.patch + 2 * margin,
                                cfg.classifier.context)
    stats = {"candidates": len(candidates), "candidate_hits": len(positive), "nodules": len(item["nodules"]),
             "nodules_missed": sum(not h for h in hits)}
    return patches.astype(np.float16), np.asarray(labels, dtype=np.float32), stats


def _vessel_voxels(scaled, nodules: list[dict], spacing_mm: float) -> np.ndarray:
    """Flat indices of the vessel-like voxels (the patch sampler's hard negatives) away from nodules."""
    import torch

    from .data import nodule_mask
    from .transforms import NoduleBalancedSamplingd

    label = nodule_mask(nodules, np.asarray(scaled.affine, dtype=float), tuple(scaled.shape[1:]))
    return NoduleBalancedSamplingd(spacing_mm)({"image": scaled, "label": torch.as_tensor(label)[None]})["hard_voxels"]


def _augment(batch, rng: np.random.Generator, patch: int, margin: int, context: int = 1):
    """Random shift within the margin, mirror images and quarter turns, the same for every view: a shift
    of s fine voxels moves the coarse view by s / context of its voxels (rounded)."""
    import torch

    out = []
    for x in batch:
        off = rng.integers(0, 2 * margin + 1, 3)
        views = [x[:2, off[0]:off[0] + patch, off[1]:off[1] + patch, off[2]:off[2] + patch]]
        if context > 1:
            o = margin + np.rint((off - margin) / context).astype(int)
            views.append(x[2:, o[0]:o[0] + patch, o[1]:o[1] + patch, o[2]:o[2] + patch])
        x = torch.cat(views)
        dims = [d + 1 for d in range(3) if rng.uniform() < 0.5]
        if dims:
            x = torch.flip(x, dims)
        x = torch.rot90(x, int(rng.integers(4)), dims=(1, 2))
        out.append(x)
    return torch.stack(out)


def blank_probability(batch, rng: np.random.Generator, fraction: float):
    """Zero the probability channels (1, and 3 with context) of about ``fraction`` of the patches, in
    place; the CT is kept."""
    if fraction:
        batch[rng.uniform(size=len(batch)) < fraction, 1::2] = 0.0
    return batch


def train_classifier(cfg: FprTrainConfig) -> dict:
    import torch
    from tqdm import tqdm

    from .model import _case_dirs
    from .pipeline import NoduleDetector

    torch.set_num_threads(1)
    # Candidates as the first stage alone makes them, on the maps the pipeline will compute.
    detector = NoduleDetector(cfg.model_path, use_classifier=False, flip_tta=cfg.flip_tta,
                              blob_min_response=cfg.blob_min_response)
    patches, labels, stats = [], [], []
    for case in tqdm(_case_dirs(cfg.data_dir), desc="first-stage candidates"):
        x, y, st = collect_case(detector, case, cfg)
        patches.append(x)
        labels.append(y)
        stats.append(st)
    x_all, y_all = np.concatenate(patches), np.concatenate(labels)
    pos, neg = np.flatnonzero(y_all == 1), np.flatnonzero(y_all == 0)
    if not len(pos) or not len(neg):
        from shared.io import InputError

        raise InputError(f"{cfg.data_dir}: need both nodule and non-nodule candidates ({len(pos)} / {len(neg)})")
    log.info("classifier data: %d positive, %d negative patches from %d cases", len(pos), len(neg), len(stats))
    nets, runs = [], []
    for member in range(cfg.ensemble):  # member k is exactly what a single run with seed + k trains
        net, run = _train_one(x_all, y_all, pos, neg, cfg, cfg.seed + member)
        nets.append(net)
        runs.append(run)
    summary = {**runs[0], "positives": int(len(pos)), "negatives": int(len(neg)), "cases": len(stats),
               "first_stage_candidates_per_case": round(float(np.mean([s["candidates"] for s in stats])), 2),
               "first_stage_nodules_missed": int(sum(s["nodules_missed"] for s in stats)),
               "data_dir": str(cfg.data_dir)}
    if cfg.ensemble > 1:
        summary["ensemble"] = [{"seed": cfg.seed + k, **run} for k, run in enumerate(runs)]
    save_classifier(cfg.model_path, nets, cfg.classifier, summary,
                    inference={"flip_tta": cfg.flip_tta, "blob_min_response": cfg.blob_min_response})
    return summary


def _train_one(x_all: np.ndarray, y_all: np.ndarray, pos: np.ndarray, neg: np.ndarray, cfg: FprTrainConfig,
               seed: int):
    """One classifier on the collected patches: balanced batches, augmentation, cosine-decayed AdamW."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_classifier(cfg.classifier)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.iterations))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses, step_times = [], []
    started = time.perf_counter()
    net.train()
    for it in tqdm(range(cfg.iterations), desc=f"classifier (seed {seed})"):
        t0 = time.perf_counter()
        # Balanced batches: negatives outnumber positives several times over.
        idx = np.r_[rng.choice(pos, cfg.batch // 2), rng.choice(neg, cfg.batch - cfg.batch // 2)]
        xb = _augment(torch.as_tensor(x_all[idx]).float(), rng, cfg.classifier.patch, cfg.jitter_voxels,
                      cfg.classifier.context)
        blank_probability(xb, rng, cfg.probability_dropout)
        loss = loss_fn(net(xb)[:, 0], torch.as_tensor(y_all[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        step_times.append(time.perf_counter() - t0)
        if cfg.max_seconds and time.perf_counter() - started > cfg.max_seconds:
            log.warning("classifier time budget reached after %d iterations", it + 1)
            break
    net.eval()
    return net, {"iterations": len(losses), "seconds_per_iteration": round(float(np.median(step_times)), 4),
                 "first_loss": round(losses[0], 4), "last_loss": round(float(np.mean(losses[-50:])), 4)}


def save_classifier(model_path: Path, nets: list, cfg: CandidateClassifierConfig, summary: dict,
                    inference: dict) -> None:
    """Add the classifier(s) to the segmentation checkpoint, with the candidate settings they were trained
    on (in one write: a failed training leaves the checkpoint as it was). Any operating point chosen
    before is dropped: it was chosen for the old scores. One classifier is stored as one state dict, as
    checkpoints were before ensembles."""
    from .model import update_checkpoint

    states = [net.state_dict() for net in nets]
    update_checkpoint(model_path, classifier_state_dict=states[0] if len(states) == 1 else states,
                      classifier_config=asdict(cfg),
                      classifier_summary=summary, operating_point=None, inference=inference)
