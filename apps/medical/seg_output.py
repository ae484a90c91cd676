"""DICOM Segmentation (highdicom) over the source CT series, one segment per nodule.

The SEG shares the source's Study and Frame of Reference and lists every source image in its
ReferencedSeriesSequence / SourceImageSequence, so ordinary viewers open it over the CT. Its patient
and study modules come from de-identified copies of the source headers (basic profile, UIDs retained)
with the pseudonym in PatientName / PatientID.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from .deid import deidentify_dataset


def native_label_map(canonical_labels: np.ndarray, canonical_affine: np.ndarray, native_affine: np.ndarray,
                     native_shape: tuple[int, int, int]) -> np.ndarray:
    """Resample the canonical label map back onto the source voxel grid (nearest neighbour)."""
    import torch
    from monai.transforms import SpatialResample

    from .transforms import to_metatensor

    img = to_metatensor(canonical_labels.astype(np.float32), canonical_affine)
    out = SpatialResample(mode="nearest", padding_mode="zeros")(
        img, dst_affine=torch.as_tensor(native_affine, dtype=torch.float64), spatial_size=native_shape)
    return np.rint(out.numpy()[0]).astype(np.uint8)


def write_segmentation(path: Path, headers: list, labels_native: np.ndarray, findings: list, pseudonym: str,
                       software_version: str = "dsv-medical 0.1") -> str:
    """Write the SEG (atomically) and return its SOPInstanceUID."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from shared.io import atomic_path

    sources = []
    for ds in headers:
        clean = copy.deepcopy(ds)
        deidentify_dataset(clean, pseudonym)
        sources.append(clean)
    algorithm = hd.AlgorithmIdentificationSequence(name="dsv MONAI 3D UNet nodule segmentation",
                                                   family=codes.cid7162.ArtificialIntelligence, version=software_version)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=f.id, segment_label=f"Nodule {f.id}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=generate_uid(), tracking_id=f"Nodule {f.id}")
        for f in findings
    ]
    # highdicom wants (frames, rows, columns) in source-image order; ours is [column, row, slice].
    pixel_array = np.transpose(labels_native, (2, 1, 0)).astype(np.uint8)
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel_array, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=901,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="dsv",
        manufacturer_model_name="dsv-medical", software_versions=software_version, device_serial_number="0",
        content_label="NODULES", content_description="Automatic lung nodule segmentation",
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return str(seg.SOPInstanceUID)
