"""A second candidate source: bright round blobs found by the Hessian "dot" filter, not by the network.

The segmentation network never proposes some small nodules that touch a vessel: its probability map is
~0 on them (docs/benchmarks/medical.md runs 9-10, ``bench/medical_missed.py``), however many such
cases it is trained on. The second-stage classifier, shown a patch at their true centres, still scores
most of them above the operating point. So they need a *candidate*, and classical CAD systems get
candidates from a blob filter (Li, Sone & Doi, "Selective enhancement filters for nodules, vessels, and
airway walls in two- and three-dimensional CT scans", Med. Phys. 30(8), 2003):

at scale sigma, with the Hessian eigenvalues of the Gaussian-smoothed HU ordered l1 <= l2 <= l3,
a bright blob has all three negative and ``dot = l3^2 / |l1|`` (scale-normalised by sigma^2) is large;
a vessel (l3 ~ 0 along its axis) and a plate give ~0. Candidates are the local maxima of the smoothed
HU whose dot response reaches ``min_response``, over a few scales, merged when they are closer than a
voxel or two. The second stage then decides, as it does for the network's candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlobConfig:
    min_response: float = 2.5
    """Scale-normalised dot response (HU). Chosen on the second stage's training seed (5), not on held-out
    cases: there 2.5 gives ~23 raw points a scan (nodules included) and covers 5 of the 6 nodules the network
    missed (5: ~11 points, 4 of 6; 1: ~123 points, still 5 of 6). Measured: docs/benchmarks/medical.md runs 10-11."""
    sigmas_mm: tuple[float, ...] = (1.0, 1.4, 2.0)
    """A sphere of radius r responds most at sigma = r / sqrt(3): these cover nodules of about 3.5-7 mm."""
    min_hu: float = -750.0
    """Smoothed HU at the maximum: ground glass (about -600) and up; lung parenchyma (about -850) is not a blob."""
    merge_mm: float = 2.0


def dot_candidates(hu: np.ndarray, voxel_mm: float, cfg: BlobConfig = BlobConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(voxel indices (N, 3), radius in mm (N,)) of the blob candidates, strongest first."""
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    points, responses, radii = [], [], []
    for sigma_mm in cfg.sigmas_mm:
        sigma = sigma_mm / voxel_mm
        smooth = ndimage.gaussian_filter(hu, sigma)
        peaks = np.argwhere((smooth == ndimage.maximum_filter(smooth, size=3)) & (smooth > cfg.min_hu))
        if not len(peaks):
            continue
        hessian = np.empty((len(peaks), 3, 3), dtype=np.float32)
        at = tuple(peaks.T)
        for i in range(3):
            for j in range(i, 3):
                order = [0, 0, 0]
                order[i] += 1
                order[j] += 1
                # sigma^2: the scale normalisation that makes responses comparable across scales
                hessian[:, i, j] = hessian[:, j, i] = ndimage.gaussian_filter(hu, sigma, order=order)[at] * sigma ** 2
        eig = np.linalg.eigvalsh(hessian)  # ascending: eig[:, 0] is the most negative
        blob = eig[:, 2] < 0
        dot = np.where(blob, eig[:, 2] ** 2 / np.maximum(np.abs(eig[:, 0]), 1e-6), 0.0)
        keep = dot >= cfg.min_response
        points.append(peaks[keep])
        responses.append(dot[keep])
        radii.append(np.full(int(keep.sum()), sigma_mm * np.sqrt(3)))
    if not points or not sum(len(p) for p in points):
        return np.zeros((0, 3), dtype=int), np.zeros(0)
    points, responses, radii = np.concatenate(points), np.concatenate(responses), np.concatenate(radii)
    order = np.argsort(-responses)
    kept: list[int] = []
    for k in order:  # greedy merge: the strongest response of a cluster stands for it
        if all(np.linalg.norm((points[k] - points[m]) * voxel_mm) > cfg.merge_mm for m in kept):
            kept.append(int(k))
    return points[kept], radii[kept]


def blob_region(hu: np.ndarray, voxel_mm: float, point: np.ndarray, radius_mm: float, labels: np.ndarray) -> np.ndarray:
    """Flat indices of the voxels a candidate claims: the ball of its radius, restricted to voxels above
    -700 HU (so that its measurements are of the blob, not the air around it) and to free voxels
    (``labels`` 0: not another candidate's). May be empty."""
    r = int(np.ceil(radius_mm / voxel_mm))
    lo, hi = np.maximum(point - r, 0), np.minimum(point + r + 1, hu.shape)
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    grid = grid[np.linalg.norm((grid - point) * voxel_mm, axis=1) <= radius_mm]
    at = tuple(grid.T)
    dense = grid[(hu[at] > -700.0) & (labels[at] == 0)]
    return np.ravel_multi_index(tuple(dense.T), hu.shape) if len(dense) else np.zeros(0, dtype=int)
