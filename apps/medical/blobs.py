"""A second candidate source: bright round blobs found by the Hessian "dot" filter, not by the network.

The segmentation network never proposes some small nodules that touch a vessel: its probability map is
~0 on them (docs/benchmarks/medical.md runs 9-10, ``bench/medical_missed.py``), however many such
cases it is trained on. The second-stage classifier, shown a patch at their true centres, still scores
most of them above the operating point. So they need a *candidate*, and classical CAD systems get
candidates from a blob filter (Li, Sone & Doi, "Selective enhancement filters for nodules, vessels, and
airway walls in two- and three-dimensional CT scans", Med. Phys. 30(8), 2003):

at scale sigma, with the Hessian eigenvalues of the Gaussian-smoothed HU ordered l1 <= l2 <= l3,
a bright blob has all three negative and ``dot = l3^2 / |l1|`` (scale-normalised by sigma^2) is large;
a vessel (l3 ~ 0 along its axis) and a plate give ~0. Candidates are the local maxima of that response
map that reach ``min_response``, over a few scales, merged when they are closer than a voxel or two. The
second stage then decides, as it does for the network's candidates.

The maxima are those of the filter's *output*, as in the paper, not of the smoothed HU: a nodule that
bulges from the side or the tip of a vessel has no HU maximum of its own (the vessel runs on, as bright),
yet its curvature gives a response maximum. On the second stage's training seed (5) that covers all 18
nodules the first stage never proposes (the HU maxima covered 8); docs/benchmarks/medical.md run 12.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlobConfig:
    min_response: float = 10.0
    """Scale-normalised dot response (HU). Chosen on the second stage's training seed (5), not on held-out
    cases: at 10 the response maxima cover all 18 nodules the first stage missed there and 103 of 105 under
    6.5 mm, with a median 28 points a scan after merging (5: 43 points, same cover; 20: 22 points, 15 of 18)."""
    sigmas_mm: tuple[float, ...] = (1.0, 1.4, 2.0)
    """A sphere of radius r responds most at sigma = r / sqrt(3): these cover nodules of about 3.5-7 mm."""
    min_hu: float = -750.0
    """Smoothed HU at the point: ground glass (about -600) and up; lung parenchyma (about -850) is not a blob."""
    merge_mm: float = 2.0


def dot_response(hu: np.ndarray, voxel_mm: float, sigma_mm: float, cfg: BlobConfig) -> np.ndarray:
    """The scale-normalised dot response at every voxel (0 where it cannot reach ``cfg.min_response``)."""
    from scipy import ndimage

    sigma = sigma_mm / voxel_mm

    def second_derivative(i: int, j: int) -> np.ndarray:
        order = [0, 0, 0]
        order[i] += 1
        order[j] += 1
        # sigma^2: the scale normalisation that makes responses comparable across scales
        return ndimage.gaussian_filter(hu, sigma, order=order) * sigma ** 2

    diagonal = [second_derivative(i, i) for i in range(3)]
    # dot >= R needs l3 <= -R (|l1| >= |l3|), hence trace <= 3 * l3 <= -3R: an exact test that spares the
    # eigen-solve on the uniform tissue that makes up most of the volume
    at = np.nonzero((ndimage.gaussian_filter(hu, sigma) > cfg.min_hu) & (sum(diagonal) <= -3 * cfg.min_response))
    hessian = np.empty((len(at[0]), 3, 3), dtype=np.float32)
    for i in range(3):
        hessian[:, i, i] = diagonal[i][at]
    del diagonal
    for i, j in ((0, 1), (0, 2), (1, 2)):
        hessian[:, i, j] = hessian[:, j, i] = second_derivative(i, j)[at]
    eig = np.linalg.eigvalsh(hessian)  # ascending: eig[:, 0] is the most negative
    response = np.zeros(hu.shape, dtype=np.float32)
    response[at] = np.where(eig[:, 2] < 0, eig[:, 2] ** 2 / np.maximum(np.abs(eig[:, 0]), 1e-6), 0.0)
    return response


def dot_candidates(hu: np.ndarray, voxel_mm: float, cfg: BlobConfig = BlobConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(voxel indices (N, 3), radius in mm (N,)) of the blob candidates, strongest first."""
    from scipy import ndimage

    hu = np.asarray(hu, dtype=np.float32)
    points, responses, radii = [], [], []
    for sigma_mm in cfg.sigmas_mm:
        response = dot_response(hu, voxel_mm, sigma_mm, cfg)
        peaks = np.argwhere((response == ndimage.maximum_filter(response, size=3)) & (response >= cfg.min_response))
        points.append(peaks)
        responses.append(response[tuple(peaks.T)])
        radii.append(np.full(len(peaks), sigma_mm * np.sqrt(3)))
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
