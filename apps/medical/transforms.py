"""MONAI dictionary transforms: canonical geometry, exact synthetic labels, intensity scaling, nodule-balanced patches.

Volumes enter as MetaTensors whose affine maps [column, row, slice] to patient LPS mm (``space`` =
LPS, so MONAI's Orientation reads the axis codes correctly). Every volume is reoriented to LPS and
resampled to isotropic ``spacing_mm`` so that the network always sees the same geometry whatever the
scanner's pixel spacing, slice thickness or slice order.
"""
from __future__ import annotations

import numpy as np
from monai.transforms import Randomizable, Transform

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


def _hu_to_scaled(hu: float) -> float:
    return (hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])


class LoadSyntheticCased(Transform):
    """``{"case_dir": ...}`` -> :func:`apps.medical.model.load_case` without the native label (training
    rasterises its own, :class:`PhantomNoduleLabeld`)."""

    def __call__(self, item: dict) -> dict:
        from pathlib import Path

        from .model import load_case

        return load_case(Path(item["case_dir"]), native_label=False)


class PhantomNoduleLabeld(Transform):
    """Label of a synthetic case rasterised from its nodule list on the image's (canonical) grid.

    The nearest-neighbour resampled ``truth/mask.npy`` is a staircase along thick slices (see
    :func:`apps.medical.data.nodule_mask`); training on it teaches the network that staircase. Expects
    ``nodules_key`` holding the ``truth/nodules.json`` records and removes it (it does not collate).
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", nodules_key: str = "nodules"):
        self.image_key, self.label_key, self.nodules_key = image_key, label_key, nodules_key

    def __call__(self, data: dict) -> dict:
        from .data import nodule_mask

        d = dict(data)
        image = d[self.image_key]
        mask = nodule_mask(d.pop(self.nodules_key), np.asarray(image.affine, dtype=float), tuple(image.shape[1:]))
        d[self.label_key] = to_metatensor(mask, np.asarray(image.affine, dtype=float))
        return d


class NoduleBalancedSamplingd(Transform):
    """Where patch centres may fall, stored sparsely: each nodule's voxels and the vessel-like voxels.

    Sampling proportional to label voxels (RandCropByPosNegLabeld) picks a 20 mm nodule ~300 times
    more often than a 3 mm one; :class:`RandNoduleBalancedCropd` instead gives every connected
    component the same share. Hard negatives are voxels that look like a nodule but are not one: soft
    tissue (> -400 HU) surrounded by lung (mean < -500 HU over ``context_mm``), i.e. vessels and their
    crossings, which were the bulk of the false positives when the background was sampled uniformly
    (mean HU -20..-100, 30-150 mm3 components at p > 0.95). Index lists instead of a dense weight map
    keep a cached case at a few MB at 0.7 mm (a float32 map of 1.8 M voxels per case would not fit 200
    cases in memory). Expects the image already scaled by :func:`scale_transform`.

    Each nodule is also marked *attached* when soft tissue lies 2-4 voxels off its surface (a vessel
    touching or crossing it): on validation cases, every small nodule the network missed at 6,000
    iterations was such a one, the network having learnt from the hard negatives that soft tissue joined
    to a vessel is vessel. :class:`RandNoduleBalancedCropd` can centre attached nodules more often.
    """

    ATTACHED_MIN_VOXELS = 10  # soft-tissue voxels in the ring; free nodules had 0-5 (partial volume)

    def __init__(self, spacing_mm: float, label_key: str = "label", image_key: str = "image", context_mm: float = 9.0):
        self.label_key, self.image_key = label_key, image_key
        self.context_voxels = max(3, int(round(context_mm / spacing_mm)) | 1)

    def __call__(self, data: dict) -> dict:
        from scipy import ndimage

        d = dict(data)
        label = np.asarray(d[self.label_key][0].cpu().numpy() > 0)
        image = np.asarray(d[self.image_key][0].cpu().numpy(), dtype=np.float32)
        near_nodule = ndimage.binary_dilation(label, iterations=2) if label.any() else label
        hard = (image > _hu_to_scaled(-400.0)) & ~near_nodule
        hard &= ndimage.uniform_filter(image, self.context_voxels) < _hu_to_scaled(-500.0)
        comp, n = ndimage.label(label)
        flat = comp.ravel()
        order = np.argsort(flat[flat > 0], kind="stable")
        d["nodule_voxels"] = np.flatnonzero(flat)[order].astype(np.int64)  # grouped by component
        d["nodule_sizes"] = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
        d["hard_voxels"] = np.flatnonzero(hard.ravel()).astype(np.int64)
        d["nodule_attached"] = np.array([self.attached(comp, k, box, image) for k, box in
                                         enumerate(ndimage.find_objects(comp), start=1)], dtype=bool)
        return d

    def attached(self, comp: np.ndarray, k: int, box: tuple[slice, ...], image: np.ndarray) -> bool:
        """Whether component ``k`` of ``comp`` (bounding ``box``) has soft tissue 2-4 voxels off its surface."""
        from scipy import ndimage

        box = tuple(slice(max(sl.start - 6, 0), sl.stop + 6) for sl in box)
        local = comp[box] == k
        ring = ndimage.binary_dilation(local, iterations=4) & ~ndimage.binary_dilation(local, iterations=2)
        return int(((image[box] > _hu_to_scaled(-400.0)) & ring).sum()) >= self.ATTACHED_MIN_VOXELS


class RandNoduleBalancedCropd(Randomizable):
    """``num_samples`` patches per case: with probability ``positive_mass`` centred on a voxel of a nodule
    chosen uniformly among the case's nodules, with ``hard_negative_mass`` on a vessel-like voxel, else
    anywhere. Centres are shifted inwards so that every patch lies inside the volume (as MONAI's own
    crop samplers do). Returns a list of dicts (MONAI's ``Compose`` maps the later transforms over it).
    A MONAI ``Randomizable``: ``CacheDataset`` caches only the transforms before it, and MONAI's
    ``DataLoader`` seeds its ``R`` (so ``set_determinism`` makes runs repeatable).
    """

    SAMPLING_KEYS = ("nodule_voxels", "nodule_sizes", "hard_voxels", "nodule_attached")

    def __init__(self, keys: tuple[str, ...], patch: int, num_samples: int, positive_mass: float = 0.5,
                 hard_negative_mass: float = 0.3, attached_weight: float = 1.0):
        if positive_mass + hard_negative_mass > 1.0:
            raise ValueError(f"positive_mass {positive_mass} + hard_negative_mass {hard_negative_mass} must be <= 1")
        self.keys, self.patch, self.num_samples = tuple(keys), int(patch), int(num_samples)
        self.positive_mass, self.hard_negative_mass = positive_mass, hard_negative_mass
        self.attached_weight = float(attached_weight)
        """How much more often a nodule touching a vessel is picked than a free one (1 = equally)."""

    def randomize(self, data: dict) -> None:
        """Draw this call's patch centres (voxel indices) and what each was drawn from."""
        shape = tuple(data[self.keys[0]].shape[1:])
        sizes, hard = data["nodule_sizes"], data["hard_voxels"]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.centres, self.kinds = [], []
        for _ in range(self.num_samples):
            u = self.R.uniform()
            if u < self.positive_mass and len(sizes):
                w = np.where(data["nodule_attached"], self.attached_weight, 1.0)
                k = int(self.R.choice(len(sizes), p=w / w.sum()))
                flat, kind = data["nodule_voxels"][starts[k] + self.R.randint(sizes[k])], "nodule"
            elif u < self.positive_mass + self.hard_negative_mass and len(hard):
                flat, kind = hard[self.R.randint(len(hard))], "hard"
            else:
                flat, kind = self.R.randint(int(np.prod(shape))), "background"
            self.centres.append(np.array(np.unravel_index(int(flat), shape)))
            self.kinds.append(kind)

    def __call__(self, data: dict) -> list[dict]:
        self.randomize(data)
        shape = np.array(data[self.keys[0]].shape[1:])
        out = []
        for centre in self.centres:
            lo = np.clip(centre - self.patch // 2, 0, np.maximum(shape - self.patch, 0))
            box = (slice(None),) + tuple(slice(int(a), int(a) + self.patch) for a in lo)
            item = {k: v for k, v in data.items() if k not in self.SAMPLING_KEYS}
            for key in self.keys:
                item[key] = data[key][box]
            out.append(item)
        return out


def training_transforms(spacing_mm: float, patch: int, samples_per_case: int, load: tuple = (),
                        attached_weight: float = 1.0, positive_mass: float = 0.5, hard_negative_mass: float = 0.3):
    """Cached deterministic part (``load``, canonical grid, exact labels, sampling lists, compact dtypes),
    then nodule-balanced crops and light augmentation."""
    import torch
    from monai.transforms import (
        CastToTyped,
        Compose,
        EnsureTyped,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandScaleIntensityd,
        SpatialPadd,
    )

    # One flat Compose of MONAI Transform subclasses: CacheDataset caches everything before the first
    # Randomizable (a nested Compose counts as one, and a plain callable stops the cache too).
    return Compose([
        *load,
        *canonical_transforms(("image",), spacing_mm).transforms,
        PhantomNoduleLabeld(),
        scale_transform("image"),
        SpatialPadd(keys=["image", "label"], spatial_size=(patch,) * 3, mode="constant"),  # volumes smaller than a patch
        NoduleBalancedSamplingd(spacing_mm),
        EnsureTyped(keys=["image", "label"], track_meta=False),
        CastToTyped(keys=["image", "label"], dtype=(torch.float16, torch.uint8)),  # halves the cache
        RandNoduleBalancedCropd(("image", "label"), patch, samples_per_case, positive_mass=positive_mass,
                                hard_negative_mass=hard_negative_mass, attached_weight=attached_weight),
        CastToTyped(keys=["image", "label"], dtype=torch.float32),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        RandRotate90d(keys=["image", "label"], prob=0.5, spatial_axes=(0, 1)),
        RandScaleIntensityd(keys=["image"], factors=0.1, prob=0.5),
        RandGaussianNoised(keys=["image"], prob=0.3, std=0.02),
    ])
