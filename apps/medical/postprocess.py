"""From a probability map to a nodule list: connected components measured in patient coordinates.

Measurements are taken on the canonical isotropic grid (so a diameter does not depend on the scanner's
slice thickness): centre = mean voxel position through the affine (patient LPS mm), longest diameter
= largest distance between two voxel centres of the component plus one voxel, volume = voxel count x
voxel volume, mean HU, and type from the share of solid voxels (> -300 HU): solid, part-solid or
ground glass. Each finding also carries a location (patient side and zone of the scanned range)
and the nearest source image number, the kind of references a report uses.

A finding's ``score`` is the component's peak probability times a shape factor: vessels and vessel
crossings are the typical false positives and they are elongated, whereas nodules are roughly
ellipsoidal (axis ratio <= ~1.5). Elongation = sqrt(largest / smallest variance of the voxel
positions along the principal axes, each variance plus voxel^2/12 for the voxel's own extent); the
score is multiplied by exp(-penalty x max(0, elongation - free)).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

SOLID_HU = -300.0


@dataclass(frozen=True)
class PostprocessConfig:
    threshold: float = 0.2
    """Candidates are the connected components of p > threshold: low, so that a faint small nodule is
    still proposed (its score then decides), and the same candidates the evaluation's FROC counts."""
    segmentation_threshold: float = 0.5
    """A candidate's nodule voxels (measurements, label map, DICOM-SEG): its voxels with p above this,
    or above half its peak where the peak is lower."""
    min_volume_mm3: float = 4.0   # a 2 mm sphere; 8 mm3 dropped under-segmented 3 mm nodules (chosen on validation seed 4)
    max_findings: int = 30        # keep the most confident ones; more is a failed scan, not a report
    elongation_free: float = 1.6  # nodules (axis ratio 0.8-1.0, partial volume) stay below this
    elongation_penalty: float = 1.5
    blob_min_response: float | None = None
    """Also propose the bright round blobs the Hessian dot filter finds (``blobs.py``) at this response;
    None: the network's components only. Only useful with a second stage trained on the same candidates,
    so ``train-fpr --blob-candidates`` records it in the checkpoint and the pipeline reads it from there."""
    min_score: float | None = None
    """Report only findings whose score reaches this. None: the operating point stored in the checkpoint
    (chosen on a validation seed, see ``dsv medical eval --set-operating-point``), else 0.5."""


@dataclass
class Finding:
    id: int
    center_mm: list[float]
    longest_diameter_mm: float
    volume_mm3: float
    mean_hu: float
    type: str
    score: float
    probability: float
    elongation: float
    side: str
    zone: str
    image_number: int
    classifier_probability: float | None = None
    """Second-stage (false-positive reduction) probability; when set, it is the score (``fpr.py``)."""

    def as_dict(self) -> dict:
        return asdict(self)


def candidate_config(cfg: PostprocessConfig | None = None) -> PostprocessConfig:
    """Every candidate of ``cfg`` (the pipeline's own by default), none dropped by score or count: what
    the evaluation's FROC ranks and the second stage trains on."""
    return replace(cfg or PostprocessConfig(), min_score=0.0, max_findings=1000)


def nodule_type(hu_values: np.ndarray) -> str:
    solid_share = float((hu_values > SOLID_HU).mean())
    if solid_share >= 0.6:
        return "solid"
    if solid_share <= 0.15:
        return "ground glass"
    return "part-solid"


def _longest_diameter(points_mm: np.ndarray, voxel_mm: float) -> float:
    from scipy.spatial import ConvexHull, QhullError
    from scipy.spatial.distance import pdist

    pts = points_mm
    if len(pts) > 64:
        try:  # the farthest pair lies on the convex hull: far fewer points to compare
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:  # flat / degenerate component: compare all points instead
            pts = points_mm
    return float(pdist(pts).max() if len(pts) > 1 else 0.0) + voxel_mm


def elongation(points_mm: np.ndarray, voxel_mm: float) -> float:
    """sqrt of the largest over the smallest principal variance (1 = round)."""
    if len(points_mm) < 2:
        return 1.0
    var = np.linalg.eigvalsh(np.cov(points_mm.T)) + voxel_mm ** 2 / 12
    return float(np.sqrt(var.max() / var.min()))


def shape_weight(elong: float, cfg: PostprocessConfig) -> float:
    return float(np.exp(-cfg.elongation_penalty * max(0.0, elong - cfg.elongation_free)))


def _add_blob_candidates(comp: np.ndarray, hu: np.ndarray, voxel_mm: float, min_response: float, min_voxels: int) -> None:
    """Label the dot filter's blobs that no network component already covers as further components."""
    from .blobs import BlobConfig, blob_region, dot_candidates

    points, radii = dot_candidates(hu, voxel_mm, BlobConfig(min_response=min_response))
    next_id = int(comp.max()) + 1
    for point, radius in zip(points, radii):
        if comp[tuple(point)]:
            continue
        region = blob_region(hu, voxel_mm, point, radius, comp)
        if len(region) >= min_voxels:
            comp.flat[region] = next_id
            next_id += 1


def extract_findings(prob: np.ndarray, hu: np.ndarray, affine: np.ndarray, native_affine: np.ndarray,
                     native_shape: tuple[int, int, int], image_numbers: list[int],
                     cfg: PostprocessConfig = PostprocessConfig(), rescore=None) -> tuple[list[Finding], np.ndarray]:
    """Components of ``prob > threshold`` on the canonical grid, each measured on its voxels above the
    segmentation threshold; returns findings and their label map. ``rescore(findings)``, if given,
    replaces the scores (the second stage) before ``min_score`` applies."""
    from scipy import ndimage

    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    voxel_mm = voxel_mm3 ** (1 / 3)
    binary = prob > cfg.threshold
    min_voxels = max(1, int(np.ceil(cfg.min_volume_mm3 / voxel_mm3)))
    comp, _ = ndimage.label(binary)
    sizes = np.bincount(comp.ravel())
    small = sizes < min_voxels
    small[0] = False
    comp[small[comp]] = 0  # too small to be a reportable nodule
    first_blob = int(comp.max()) + 1  # labels from here on are blob candidates
    if cfg.blob_min_response is not None:
        _add_blob_candidates(comp, hu, voxel_mm, cfg.blob_min_response, min_voxels)
    # Patient side and zone relative to the scanned volume (the scan is centred on the chest).
    corners = np.array([[i, j, k, 1] for i in (0, native_shape[0] - 1) for j in (0, native_shape[1] - 1)
                        for k in (0, native_shape[2] - 1)], dtype=float) @ native_affine.T
    mid_x = corners[:, 0].mean()
    z_lo, z_hi = corners[:, 2].min(), corners[:, 2].max()
    native_inv = np.linalg.inv(native_affine)
    findings: list[Finding] = []
    measured: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
    for idx, box in enumerate(ndimage.find_objects(comp), start=1):
        if box is None:
            continue
        component = comp[box] == idx
        peak = float(prob[box][component].max())
        # A blob candidate (where the network sees next to nothing) is measured on the region it claimed.
        local = component if idx >= first_blob else component & (prob[box] > min(cfg.segmentation_threshold, peak / 2))
        measured[idx] = (box, local)
        offset = np.array([sl.start for sl in box])
        vox = np.argwhere(local) + offset
        mm = np.c_[vox, np.ones(len(vox))] @ affine.T
        center = mm[:, :3].mean(0)
        values = hu[box][local]
        frac = (center[2] - z_lo) / max(z_hi - z_lo, 1e-6)
        elong = elongation(mm[:, :3], voxel_mm)
        k_native = int(np.clip(round((native_inv @ np.r_[center, 1.0])[2]), 0, native_shape[2] - 1))
        findings.append(Finding(
            id=idx, center_mm=[round(float(v), 1) for v in center],
            longest_diameter_mm=round(_longest_diameter(mm[:, :3], voxel_mm), 1),
            volume_mm3=round(len(vox) * voxel_mm3, 1), mean_hu=round(float(values.mean()), 0),
            type=nodule_type(values), score=round(peak * shape_weight(elong, cfg), 6), probability=round(peak, 4),
            elongation=round(elong, 2),
            side="left" if center[0] > mid_x else "right",  # LPS: +x points to the patient's left
            zone="upper" if frac > 2 / 3 else "middle" if frac > 1 / 3 else "lower",
            image_number=int(image_numbers[k_native]),
        ))
    if rescore is not None and findings:
        rescore(findings)
    min_score = 0.5 if cfg.min_score is None else cfg.min_score
    findings = sorted((f for f in findings if f.score >= min_score), key=lambda f: -f.score)[:cfg.max_findings]
    # Largest first, renumbered so that ids in the report, the SEG and the label map agree.
    findings.sort(key=lambda f: -f.longest_diameter_mm)
    relabelled = np.zeros(comp.shape, dtype=np.int16)
    for new_id, f in enumerate(findings, start=1):
        box, local = measured[f.id]
        relabelled[box][local] = new_id
        f.id = new_id
    return findings, relabelled
