"""The Hessian dot filter (``apps/medical/blobs.py``): a second candidate source for small nodules on vessels."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from apps.medical.blobs import BlobConfig, dot_candidates
from apps.medical.postprocess import PostprocessConfig, extract_findings

VOXEL_MM = 0.7
SHAPE = (64, 64, 64)
NODULE_CENTRE = np.array([32, 37, 32])  # voxels
NODULE_RADIUS_MM = 2.1


def _phantom(with_nodule: bool) -> np.ndarray:
    """Lung (-850 HU) crossed end to end by a vessel 2.4 mm across, optionally a 4.2 mm solid nodule
    touching it (its centre 3.5 mm off the vessel axis); blurred like a scanner, a little noise."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).astype(float)
    vessel = np.linalg.norm((grid[..., 1:] - 32) * VOXEL_MM, axis=-1) <= 1.2
    body = vessel.copy()
    if with_nodule:
        body |= np.linalg.norm((grid - NODULE_CENTRE) * VOXEL_MM, axis=-1) <= NODULE_RADIUS_MM
    hu = ndimage.gaussian_filter(np.where(body, 40.0, -850.0), 0.6)
    return hu + np.random.default_rng(0).normal(0, 10, SHAPE)


def _affine() -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = -32 * VOXEL_MM
    return affine


def test_dot_filter_finds_the_nodule_on_a_vessel_and_never_the_vessel_itself():
    points, radii = dot_candidates(_phantom(with_nodule=True), VOXEL_MM)
    assert len(points) >= 1
    off_mm = np.linalg.norm((points - NODULE_CENTRE) * VOXEL_MM, axis=1)
    assert off_mm[0] <= 1.5, "the strongest blob is the nodule"
    assert np.all(off_mm <= 4.0), f"blobs away from the nodule: {points[off_mm > 4.0].tolist()}"
    assert 1.0 <= radii[0] <= 4.0
    vessel_only, _ = dot_candidates(_phantom(with_nodule=False), VOXEL_MM)
    assert len(vessel_only) == 0, f"a straight vessel proposed {len(vessel_only)} blob(s)"


@pytest.mark.parametrize("blobs", [False, True])
def test_blob_candidates_become_findings_measured_on_their_own_region(blobs):
    hu = _phantom(with_nodule=True)
    prob = np.zeros(SHAPE, dtype=np.float32)  # the network's miss: it sees nothing there
    cfg = PostprocessConfig(blob_min_response=BlobConfig().min_response if blobs else None, min_score=0.0)
    findings, labels = extract_findings(prob, hu, _affine(), _affine(), SHAPE, list(range(1, 65)), cfg)
    if not blobs:
        assert findings == [] and not labels.any()
        return
    assert len(findings) == 1
    f = findings[0]
    centre_mm = (NODULE_CENTRE - 32) * VOXEL_MM
    assert np.linalg.norm(np.asarray(f.center_mm) - centre_mm) <= 1.5
    sphere_mm3 = 4 / 3 * np.pi * NODULE_RADIUS_MM ** 3
    assert 0.3 * sphere_mm3 <= f.volume_mm3 <= 2.0 * sphere_mm3 and f.type == "solid"
    assert f.probability == 0.0 and (labels == 1).sum() == round(f.volume_mm3 / VOXEL_MM ** 3)
