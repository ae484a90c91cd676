"""Find CT series in a folder of DICOM files and turn each into a Hounsfield-unit volume.

Every series is judged on its own. A file that is not DICOM, a series that is not a CT image series,
missing or duplicated slices, inconsistent orientation / pixel spacing / matrix, or a pixel payload
that cannot be decoded becomes a :class:`SeriesProblem` naming the reason and the file; the other
series carry on. Compressed transfer syntaxes (JPEG, JPEG-LS, JPEG 2000, RLE) decode through the
pydicom pixel-data plugins (pylibjpeg, -openjpeg, -libjpeg, -rle).

Geometry follows PS3.3 C.7.6.2: ImageOrientationPatient holds the direction of increasing column
index then of increasing row index; slices are sorted by ImagePositionPatient projected on the slice
normal (their cross product), never by InstanceNumber or file name. The volume is indexed
[column, row, slice] (MONAI's convention) and its affine maps voxel indices to patient LPS mm.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ORIENTATION_TOL = 1e-3
SPACING_TOL = 0.02  # relative tolerance on slice gaps and pixel spacing


@dataclass
class SeriesProblem:
    series_key: str          # pseudonymised series id ("unreadable" for files with no series)
    reason: str
    file: str                # path relative to the scanned folder
    modality: str | None = None

    def as_dict(self) -> dict:
        return {"series": self.series_key, "reason": self.reason, "file": self.file, "modality": self.modality}


@dataclass
class CTSeries:
    """A CT series with its slices sorted along the normal; pixels are loaded by :func:`load_volume`."""

    series_uid: str
    files: list[Path]
    headers: list  # pydicom datasets without pixel data, same order as files
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]
    phi: dict[str, str] = field(default_factory=dict)


def _read_header(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True), None
    except InvalidDicomError:
        return None, "not a DICOM file (no DICM preamble)"
    except Exception as exc:  # noqa: BLE001 - truncated / corrupt headers of any kind become a refusal
        return None, f"unreadable DICOM header ({type(exc).__name__})"


def scan_folder(folder: Path, pseudonymise) -> tuple[list[CTSeries], list[SeriesProblem]]:
    """Walk ``folder`` (any depth, any file names) and return valid CT series plus problems.

    ``pseudonymise(text) -> str`` turns a series UID into the key used in problems and outputs.
    """
    from .deid import collect_phi

    folder = Path(folder)
    groups: dict[str, list] = defaultdict(list)
    problems: list[SeriesProblem] = []
    for root, _dirs, names in os.walk(folder):
        for name in sorted(names):
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            ds, why = _read_header(path)
            if ds is None:
                problems.append(SeriesProblem("unreadable", why, rel))
                continue
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            if not uid:
                problems.append(SeriesProblem("unreadable", "DICOM file without SeriesInstanceUID", rel))
                continue
            groups[uid].append((path, rel, ds))
    series: list[CTSeries] = []
    for uid, members in groups.items():
        key = pseudonymise(uid)
        result = _judge_series(uid, key, members)
        if isinstance(result, SeriesProblem):
            problems.append(result)
        else:
            result.phi = collect_phi(result.headers)
            series.append(result)
    return series, problems


def _judge_series(uid: str, key: str, members: list) -> CTSeries | SeriesProblem:
    first_rel, first = members[0][1], members[0][2]
    modality = str(first.get("Modality", "") or "")
    for _path, rel, ds in members:
        m = str(ds.get("Modality", "") or "")
        if m != "CT":
            return SeriesProblem(key, f"modality {m or 'missing'} is not CT: series skipped", rel, m or None)
        if str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE:
            return SeriesProblem(key, f"SOP class {ds.get('SOPClassUID')} is not CT Image Storage", rel, m)
        for attr in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if attr not in ds:
                return SeriesProblem(key, f"missing {attr}", rel, m)
    iop0 = np.asarray(first.ImageOrientationPatient, dtype=float)
    ps0 = np.asarray(first.PixelSpacing, dtype=float)
    size0 = (int(first.Rows), int(first.Columns))
    for _path, rel, ds in members:
        if np.abs(np.asarray(ds.ImageOrientationPatient, dtype=float) - iop0).max() > ORIENTATION_TOL:
            return SeriesProblem(key, "inconsistent ImageOrientationPatient within the series", rel, modality)
        if np.abs(np.asarray(ds.PixelSpacing, dtype=float) / ps0 - 1).max() > SPACING_TOL:
            return SeriesProblem(key, "inconsistent PixelSpacing within the series", rel, modality)
        if (int(ds.Rows), int(ds.Columns)) != size0:
            return SeriesProblem(key, "inconsistent image matrix (Rows/Columns) within the series", rel, modality)
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 0.5:
        return SeriesProblem(key, "degenerate ImageOrientationPatient", first_rel, modality)
    normal /= np.linalg.norm(normal)
    along = np.array([float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)) for _, _, ds in members])
    order = np.argsort(along, kind="stable")
    members = [members[i] for i in order]
    along = along[order]
    gaps = np.diff(along)
    if len(gaps) and gaps.min() < 1e-3:
        dup = int(np.argmin(gaps)) + 1
        return SeriesProblem(key, f"duplicated slice position {along[dup]:.3f} mm along the normal", members[dup][1], modality)
    if len(gaps):
        step = float(np.median(gaps))
        bad = np.abs(gaps / step - 1) > max(SPACING_TOL, 0.1)
        if bad.any():
            idx = int(np.argmax(bad)) + 1
            n_missing = int(round(gaps[idx - 1] / step)) - 1
            reason = (f"missing {n_missing} slice(s) before this file (gap {gaps[idx - 1]:.2f} mm, expected {step:.2f} mm)"
                      if n_missing >= 1 else f"inconsistent slice spacing ({gaps[idx - 1]:.2f} mm vs {step:.2f} mm)")
            return SeriesProblem(key, reason, members[idx][1], modality)
        # The in-plane offset between consecutive origins must lie along the normal too.
        first_pos = np.asarray(members[0][2].ImagePositionPatient, dtype=float)
        last_pos = np.asarray(members[-1][2].ImagePositionPatient, dtype=float)
        drift = np.linalg.norm((last_pos - first_pos) - normal * (along[-1] - along[0]))
        if drift > 0.5 * float(ps0.min()) * max(1, len(members) // 10):
            return SeriesProblem(key, "slice positions are not collinear with the slice normal (tilted/sheared stack)",
                                 members[-1][1], modality)
    else:
        step = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
    origin = np.asarray(members[0][2].ImagePositionPatient, dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * ps0[1]   # column index moves along the row direction by the column spacing
    affine[:3, 1] = col_dir * ps0[0]   # row index moves along the column direction by the row spacing
    affine[:3, 2] = normal * step
    affine[:3, 3] = origin
    return CTSeries(uid, [m[0] for m in members], [m[2] for m in members], affine,
                    (float(ps0[1]), float(ps0[0]), step), (size0[1], size0[0], len(members)))


def load_volume(series: CTSeries, key: str) -> tuple[np.ndarray | None, SeriesProblem | None]:
    """Decode pixels (any supported transfer syntax) and convert to HU; a failure names the file."""
    import pydicom

    vol = np.zeros(series.shape, dtype=np.float32)
    for k, path in enumerate(series.files):
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - any decoder failure refuses the series, naming the file
            return None, SeriesProblem(key, f"pixel data cannot be decoded ({type(exc).__name__}: "
                                            f"{str(exc).splitlines()[0][:160]})", path.name, "CT")
        if arr.ndim != 2:
            return None, SeriesProblem(key, f"expected one frame per file, got array shape {arr.shape}", path.name, "CT")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        vol[..., k] = (arr.astype(np.float32) * slope + intercept).T  # [row, col] -> [col, row]
    return vol, None
