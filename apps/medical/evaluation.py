"""Detection and segmentation quality on held-out synthetic cases (a different seed from training).

Matching follows LUNA16: a candidate hits a true nodule when its centre lies within the nodule's
radius (here plus 1 mm, one analysis voxel, so that a 3 mm nodule's detection is not decided by
centroid rounding); several candidates on one nodule count once (the best score); every other
candidate is a false positive. FROC and CPM (mean sensitivity at 1/8 ... 8 FP per scan) come from
MONAI's ``compute_froc_curve_data`` / ``compute_froc_score``; Dice per nodule from MONAI's
``compute_dice`` inside a box around each true nodule. All figures are synthetic-data results.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .postprocess import PostprocessConfig

CPM_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
SIZE_BINS = (("lt5mm", 0.0, 5.0), ("5to10mm", 5.0, 10.0), ("gt10mm", 10.0, 1e9))


@dataclass(frozen=True)
class EvalConfig:
    model_path: Path
    data_dir: Path | None = None
    cases: int = 6
    seed: int = 1000
    out: Path | None = None
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    """Candidates are the pipeline's findings before the score cut (:func:`candidate_config`)."""
    operating_threshold: float = 0.5
    """Score at which sensitivity and FP/scan are reported (chosen on a validation seed)."""
    segmentation_threshold: float = 0.5
    """Probability above which a voxel is nodule, for Dice (as the pipeline's masks)."""
    match_slack_mm: float = 1.0


def _local_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    import torch
    from monai.metrics import compute_dice

    p = torch.as_tensor(pred, dtype=torch.float32)[None, None]
    t = torch.as_tensor(truth, dtype=torch.float32)[None, None]
    return float(compute_dice(p, t, include_background=True, ignore_empty=False)[0, 0])


def _nodule_box(mask: np.ndarray, margin: int = 3) -> tuple[slice, ...] | None:
    from scipy import ndimage

    found = ndimage.find_objects(mask.astype(np.int32))
    if not found or found[0] is None:
        return None
    return tuple(slice(max(sl.start - margin, 0), sl.stop + margin) for sl in found[0])


def match_candidates(candidates, nodules: list[dict], slack_mm: float) -> list[list[int]]:
    """Per true nodule, the indices of the candidates whose centre lies within its radius + ``slack_mm``."""
    return [[i for i, f in enumerate(candidates)
             if np.linalg.norm(np.asarray(f.center_mm) - np.asarray(n["center_mm"])) <= n["diameter_mm"] / 2 + slack_mm]
            for n in nodules]


def evaluate_case(detector, case_dir: Path, cfg: EvalConfig) -> dict:
    """One synthetic case through ``detector`` (a :class:`~apps.medical.pipeline.NoduleDetector`)."""
    from .data import nodule_mask
    from .model import load_case
    from .postprocess import candidate_config
    from .transforms import canonical_transforms

    item = load_case(case_dir)
    nodules = item["nodules"]
    native_affine = np.asarray(item["image"].affine, dtype=float)
    native_shape = tuple(item["image"].shape[1:])
    resampled_mask = canonical_transforms(("label",), detector.model_cfg.spacing_mm, ("nearest",))(item)["label"].numpy()[0] > 0.5
    hu_c, scaled = detector.canonical(item["image"][0].numpy(), native_affine)
    affine_c = np.asarray(hu_c.affine, dtype=float)
    hu = hu_c.numpy()[0]
    t0 = time.perf_counter()
    prob = detector.probability(scaled)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    candidates, _ = detector.findings(prob, hu_c, scaled, native_affine, native_shape, list(range(1, native_shape[2] + 1)),
                                      candidate_config(cfg.postprocess))
    candidates_seconds = time.perf_counter() - t0  # components, blob filter, second stage
    hits_per_nodule = match_candidates(candidates, nodules, cfg.match_slack_mm)
    used = set().union(*hits_per_nodule) if hits_per_nodule else set()
    per_nodule = []
    pred_bin = prob > cfg.segmentation_threshold
    for n, hits in zip(nodules, hits_per_nodule):
        score = max((candidates[i].score for i in hits), default=0.0)
        # Dice inside a box around this nodule: against the phantom's ellipsoid rasterised on the analysis
        # grid (the truth), and against truth/mask.npy resampled with nearest neighbour (runs 1-5's figure,
        # whose staircase along thick slices caps even a perfect segmentation; its agreement with the
        # phantom is kept as ``resampled_mask_dice`` to show by how much).
        exact = nodule_mask([n], affine_c, hu.shape).astype(bool)
        box = _nodule_box(exact)
        record = {"diameter_mm": n["diameter_mm"], "kind": n["kind"], "score": score,
                  "dice": None, "dice_vs_resampled_mask": None, "resampled_mask_dice": None}
        if box is not None:
            others = resampled_mask[box] & ~exact[box] & (nodule_mask([m for m in nodules if m is not n], affine_c, hu.shape)[box] > 0)
            legacy = resampled_mask[box] & ~others  # this nodule's part of the resampled mask
            record["dice"] = round(_local_dice(pred_bin[box], exact[box]), 4)
            record["dice_vs_resampled_mask"] = round(_local_dice(pred_bin[box], legacy), 4)
            record["resampled_mask_dice"] = round(_local_dice(legacy, exact[box]), 4)
        per_nodule.append(record)
    fp_scores = [f.score for i, f in enumerate(candidates) if i not in used]
    return {"case": case_dir.name, "nodules": per_nodule, "fp_scores": fp_scores, "inference_s": round(seconds, 3),
            "candidates_s": round(candidates_seconds, 3)}


def loosest_threshold(fp_scores: list[float], n_scans: int, fp_per_scan_limit: float = 1.0) -> float:
    """The lowest score threshold (findings count when score >= it) that keeps the false positives per
    scan at or under the limit: just above the first false positive that would break it."""
    allowed = int(np.floor(fp_per_scan_limit * n_scans + 1e-9))
    ranked = sorted((s for s in fp_scores if s > 0), reverse=True)
    if len(ranked) <= allowed:
        return float(np.nextafter(0.0, 1.0))
    return float(np.nextafter(ranked[allowed], np.inf))


def summarise(cases: list[dict], cfg: EvalConfig) -> dict:
    from monai.metrics import compute_froc_curve_data, compute_froc_score

    nodules = [n for c in cases for n in c["nodules"]]
    tp_probs = np.array([n["score"] for n in nodules], dtype=float)  # 0 = missed (MONAI's convention)
    fp_probs = np.array([0.0] + [s for c in cases for s in c["fp_scores"]], dtype=float)
    fps, sens = compute_froc_curve_data(fp_probs, tp_probs, num_targets=len(nodules), num_images=len(cases))
    cpm = float(compute_froc_score(fps, sens, eval_thresholds=CPM_FP_RATES)) if len(nodules) else float("nan")
    at_rates = {str(r): round(float(np.interp(r, fps[::-1], sens[::-1])), 4) for r in CPM_FP_RATES}

    def sens_by_size(threshold: float) -> dict:
        out = {}
        for name, lo, hi in SIZE_BINS:
            sel = [n for n in nodules if lo <= n["diameter_mm"] < hi]
            hit = sum(n["score"] >= threshold for n in sel)
            out[name] = {"n": len(sel), "sensitivity": round(hit / len(sel), 4) if sel else None}
        return out

    def fp_per_scan(threshold: float) -> float:
        return sum(s >= threshold for c in cases for s in c["fp_scores"]) / len(cases)

    at1 = loosest_threshold([s for c in cases for s in c["fp_scores"]], len(cases), fp_per_scan_limit=1.0)

    def mean_of(key: str, big: bool) -> float | None:
        values = [n[key] for n in nodules if n.get(key) is not None and (n["diameter_mm"] >= 5) == big]
        return round(float(np.mean(values)), 4) if values else None

    return {
        "data": "SYNTHETIC CT (held-out seed); not clinical performance",
        "cases": len(cases), "nodules": len(nodules),
        "operating_threshold": cfg.operating_threshold,
        "sensitivity_by_size": sens_by_size(cfg.operating_threshold),
        "fp_per_scan": round(fp_per_scan(cfg.operating_threshold), 3),
        "threshold_at_1fp_per_scan": float(at1),
        "sensitivity_by_size_at_le_1fp_per_scan": sens_by_size(at1),
        "froc_sensitivity_at_fp_rates": at_rates,
        "cpm": round(cpm, 4),
        "dice_mean_ge5mm": mean_of("dice", True),
        "dice_mean_lt5mm": mean_of("dice", False),
        "dice_vs_resampled_mask_mean_ge5mm": mean_of("dice_vs_resampled_mask", True),
        "resampled_mask_vs_phantom_dice_mean_ge5mm": mean_of("resampled_mask_dice", True),
        "dice_per_nodule": [{k: n.get(k) for k in ("diameter_mm", "kind", "score", "dice", "dice_vs_resampled_mask")}
                            for n in nodules],
        "inference_s_per_case_median": round(float(np.median([c["inference_s"] for c in cases])), 3),
        "candidates_s_per_case_median": (round(float(np.median([c["candidates_s"] for c in cases])), 3)
                                         if all("candidates_s" in c for c in cases) else None),
    }


def evaluate(cfg: EvalConfig) -> dict:
    import torch
    from tqdm import tqdm

    from shared.io import write_text_atomic

    from .data import generate_cases
    from .pipeline import NoduleDetector

    torch.set_num_threads(1)
    detector = NoduleDetector(cfg.model_path)
    with tempfile.TemporaryDirectory(prefix="dsv-med-eval-") as tmp:
        data_dir = cfg.data_dir
        if data_dir is None:
            data_dir = Path(tmp)
            generate_cases(data_dir, cfg.cases, cfg.seed, progress=False)
        case_dirs = sorted(p.parent.parent for p in Path(data_dir).glob("*/truth/nodules.json"))
        results = [evaluate_case(detector, c, cfg) for c in tqdm(case_dirs, desc="evaluating")]
    summary = summarise(results, cfg) | {"second_stage": detector.classifier is not None}
    if cfg.out:
        write_text_atomic(cfg.out, json.dumps(summary, indent=1))
    return summary


def store_operating_point(model_path: Path, validation: dict, chosen_on: str, second_stage: bool,
                          floor: float = 0.05) -> dict:
    """Record the validation set's loosest <= 1 FP/scan threshold in the checkpoint: the pipeline then
    reports findings from that score up. Chosen here, on validation cases, never on the held-out seed.
    ``floor``: where validation had fewer false positives than allowed, the loosest threshold would
    report any candidate at all; a candidate the models give under 5% is not worth a reader's time."""
    from .model import update_checkpoint

    point = {"threshold": max(floor, validation["threshold_at_1fp_per_scan"]), "fp_per_scan_limit": 1.0,
             "chosen_on": chosen_on, "validation_cases": validation["cases"], "second_stage": second_stage}
    update_checkpoint(model_path, operating_point=point)
    return point
