"""MONAI dictionary transforms: canonical geometry, network intensity scaling, nodule-balanced patches.

Volumes enter as MetaTensors whose affine maps [column, row, slice] to patient LPS mm (``space`` =
LPS, so MONAI's Orientation reads the axis codes correctly). Every volume is reoriented to LPS and
resampled to isotropic ``spacing_mm`` so that the network always sees the same geometry whatever the
scanner's pixel spacing, slice thickness or slice order.
"""
from __future__ import annotations

import numpy as np

HU_WINDOW = (-1000.0, 400.0)  # lung parenchyma to soft tissue: what matters for nodules


def to_metatensor(array: np.ndarray, affine: np.ndarray):
    import torch
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(np.ascontiguousarray(array))[None], affine=torch.as_tensor(affine, dtype=torch.float64),
                      meta={"space": "LPS"})


def canonical_transforms(keys=("image",), spacing_mm: float = 1.0, modes=("bilinear",)):
    """Reorient to LPS and resample to isotropic spacing (labels use nearest)."""
    from monai.transforms import Compose, Orientationd, Spacingd

    return Compose([
        Orientationd(keys=list(keys), axcodes="LPS", labels=None),  # labels from the MetaTensor's LPS space
        Spacingd(keys=list(keys), pixdim=(spacing_mm,) * 3, mode=list(modes), padding_mode="border"),
    ])


def scale_transform(key: str = "image"):
    from monai.transforms import ScaleIntensityRanged

    return ScaleIntensityRanged(keys=[key], a_min=HU_WINDOW[0], a_max=HU_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)


class NoduleBalancedWeightd:
    """Patch-centre weight map in which every nodule gets the same total weight.

    Sampling proportional to label voxels (RandCropByPosNegLabeld) picks a 20 mm nodule ~300 times
    more often than a 3 mm one; here each connected component gets ``positive_mass / n_nodules``
    spread over its voxels, and the background shares the rest, so small nodules are seen as often as
    large ones.
    """

    def __init__(self, label_key: str = "label", weight_key: str = "weight", positive_mass: float = 0.7):
        self.label_key, self.weight_key, self.positive_mass = label_key, weight_key, positive_mass

    def __call__(self, data: dict) -> dict:
        import torch
        from scipy import ndimage

        d = dict(data)
        label = np.asarray(d[self.label_key][0].cpu().numpy() > 0)
        comp, n = ndimage.label(label)
        weight = np.full(label.shape, (1 - self.positive_mass) / max(1, (~label).sum()), dtype=np.float32)
        if n == 0:
            weight[:] = 1.0 / label.size
        else:
            sizes = np.bincount(comp.ravel())
            per_voxel = self.positive_mass / n / np.maximum(sizes, 1)
            weight[label] = per_voxel[comp[label]]
        d[self.weight_key] = torch.as_tensor(weight)[None]
        return d


def training_transforms(spacing_mm: float, patch: int, samples_per_case: int):
    """Cached deterministic part, then random nodule-balanced crops and light augmentation."""
    from monai.transforms import (
        Compose,
        DeleteItemsd,
        EnsureTyped,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        RandWeightedCropd,
    )

    return Compose([
        canonical_transforms(("image", "label"), spacing_mm, ("bilinear", "nearest")),
        scale_transform("image"),
        NoduleBalancedWeightd(),
        EnsureTyped(keys=["image", "label", "weight"], track_meta=False),
        RandWeightedCropd(keys=["image", "label"], w_key="weight", spatial_size=(patch,) * 3,
                          num_samples=samples_per_case),
        DeleteItemsd(keys=["weight"]),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        RandRotate90d(keys=["image", "label"], prob=0.5, spatial_axes=(0, 1)),
        RandScaleIntensityd(keys=["image"], factors=0.1, prob=0.5),
        RandGaussianNoised(keys=["image"], prob=0.3, std=0.02),
    ])
