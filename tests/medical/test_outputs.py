"""Outputs: DICOM-SEG read back with pydicom, report verification and release policy, privacy."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest

from apps.medical.ingest import scan_folder
from apps.medical.postprocess import Finding, extract_findings
from apps.medical.report import (
    ReportConfig,
    fill_slots,
    make_report,
    template_report,
    verify_report,
)

from .conftest import PLANTED, SMALL


def test_seg_reads_back_and_references_source_series(synth_cases, tmp_path):
    from apps.medical.seg_output import write_segmentation

    data, records = synth_cases
    rec = records[0]
    series, _ = scan_folder(data / rec["case_id"] / "dicom", lambda u: "S")
    s = series[0]
    mask = np.load(data / rec["case_id"] / "truth" / "mask.npy")
    findings = [Finding(id=1, center_mm=[0, 0, 0], longest_diameter_mm=5.0, volume_mm3=50.0, mean_hu=20.0, type="solid",
                        score=0.9, probability=0.9, elongation=1.1, side="left", zone="upper", image_number=3)]
    path = tmp_path / "seg.dcm"
    write_segmentation(path, s.headers, mask, findings, "PAT-abc")
    seg = pydicom.dcmread(path)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == s.headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == s.headers[0].FrameOfReferenceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == rec["series_instance_uid"]
    referenced = {i.ReferencedSOPInstanceUID for i in ref.ReferencedInstanceSequence}
    assert referenced == {h.SOPInstanceUID for h in s.headers}
    # One frame per slice holding nodule voxels, each pointing at its source CT image.
    nonempty = int((mask.reshape(-1, mask.shape[2]).max(0) > 0).sum())
    assert int(seg.NumberOfFrames) == nonempty
    for frame in seg.PerFrameFunctionalGroupsSequence:
        src = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert src in referenced
    assert str(seg.PatientName) == "PAT-abc^" and seg.PatientIdentityRemoved == "YES"
    assert int(np.asarray(seg.pixel_array).sum()) == int(mask.sum())


def test_postprocess_measures_a_known_sphere():
    shape = (64, 64, 64)
    zz = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    sphere = np.linalg.norm(zz - np.array([20, 30, 50]), axis=-1) <= 5.0  # 11 mm across at 1 mm spacing
    prob = sphere.astype(np.float32) * 0.9
    hu = np.where(sphere, 30.0, -850.0)
    affine = np.eye(4)
    affine[:3, 3] = [-32, -32, -32]
    findings, labels = extract_findings(prob, hu, affine, affine, shape, list(range(1, 65)))
    assert len(findings) == 1
    f = findings[0]
    assert np.allclose(f.center_mm, [-12, -2, 18], atol=0.1)
    assert abs(f.longest_diameter_mm - 11.0) <= 1.0
    assert abs(f.volume_mm3 - sphere.sum()) < 1e-6 and f.type == "solid" and f.mean_hu == 30
    assert f.side == "right" and f.zone == "upper" and f.image_number == 51
    assert (labels == 1).sum() == sphere.sum()


FINDINGS = [
    {"id": 1, "type": "solid", "longest_diameter_mm": 8.4, "volume_mm3": 245.1, "mean_hu": -12.0, "side": "right",
     "zone": "upper", "image_number": 23, "center_mm": [-30.1, 4.0, 12.5], "score": 0.9},
    {"id": 2, "type": "ground glass", "longest_diameter_mm": 4.2, "volume_mm3": 30.5, "mean_hu": -580.0,
     "side": "left", "zone": "lower", "image_number": 7, "center_mm": [25.0, -3.0, -20.0], "score": 0.7},
]


def test_verification_accepts_the_template_and_catches_each_kind_of_error():
    text = template_report(FINDINGS, "Smoker, 30 pack-years.")
    assert verify_report(text, FINDINGS, "Smoker, 30 pack-years.").ok
    assert verify_report(template_report([], None), []).ok
    bad = {
        "size": "Two nodules; largest 9.0 mm.",
        "count": "Three pulmonary nodules are present, 8.4 mm and 4.2 mm.",
        "location": "Nodule 1 (8.4 mm) in the left upper zone. Two nodules.",
        "reference": "Nodule 3 measures 4.2 mm. Two nodules.",
        "invented number": "Two nodules, 8.4 mm and 4.2 mm, Lung-RADS 17.",
        "denial": "No nodules. Nodule 1 is 8.4 mm.",
        "incomplete": "Two pulmonary nodules, the largest 8.4 mm.",
        "says nothing": "supervisory with score 1 ( ( ( breach",
    }
    for kind, report in bad.items():
        assert not verify_report(report, FINDINGS).ok, kind


def test_release_policy_regenerates_then_falls_back_and_records():
    calls = []

    def wrong_then_wrong(findings, history, attempt):
        calls.append(attempt)
        return "Four nodules, the largest 12 mm."

    out = make_report(FINDINGS, None, wrong_then_wrong, ReportConfig(time_budget_s=30))
    assert calls == [0, 1] and out["source"] == "template" and out["verified"]
    assert out["fallback_reason"] == "LLM report failed verification"
    assert all(not a["verification"]["ok"] for a in out["attempts"])

    good = template_report(FINDINGS, None).replace("AUTOMATED LUNG NODULE ANALYSIS", "REPORT")
    out = make_report(FINDINGS, None, lambda f, h, a: good)
    assert out["source"] == "llm:medical" and out["verified"] and out["text"] == good

    def down(findings, history, attempt):
        raise ConnectionError("refused")

    out = make_report(FINDINGS, None, down)
    assert out["source"] == "template" and out["fallback_reason"] == "model server unavailable"


def test_report_through_the_real_model_server(model_server):
    """The tiny untrained adapter writes free text: it is checked, and released only if it agrees."""
    from apps.medical.llm import AdapterReporter
    from core.client import ModelClient

    client = ModelClient(model_server.base_url, api_key=model_server.api_keys["medical"])
    out = make_report(FINDINGS, "Screening CT.", AdapterReporter(client, summary_tokens=24, nodule_tokens=16), ReportConfig(time_budget_s=60))
    assert out["attempts"] and "text" in out["attempts"][0]  # the model really answered
    assert out["verified"]
    assert out["source"] in ("llm:medical", "template")
    if out["source"] == "template":
        assert not out["attempts"][0]["verification"]["ok"]


def test_segment_command_writes_no_identifier_anywhere(tmp_path, tiny_medical_model, caplog, capsys, monkeypatch):
    """Plant identifiers in the headers and the history; grep every file written and every log line."""
    import dataclasses

    from apps.medical.data import generate_case
    from core.cli import main

    home = tmp_path / "home"
    monkeypatch.setenv("DSV_HOME", str(home))
    monkeypatch.setenv("DSV_SERVER_URL", "http://127.0.0.1:9/v1")  # nothing listens: template fallback path
    cfg = dataclasses.replace(SMALL, patient_name=PLANTED["PatientName"],
                              extra_tags={k: v for k, v in PLANTED.items() if k != "PatientName"})
    src = tmp_path / "in"
    generate_case(src, "planted", 5, cfg)
    (src / "planted" / "truth").rename(tmp_path / "truth")  # the folder holds only DICOM + noise below
    (src / "notes.txt").write_text("scanner export")
    out = tmp_path / "out"
    model_path, _ = tiny_medical_model
    history = f"Patient {PLANTED['PatientName'].replace('^', ' ')} born 1947-03-15, referred for cough."
    with caplog.at_level(logging.DEBUG):
        rc = main(["medical", "segment", str(src), "--out", str(out), "--model", str(model_path), "--history", history])
    captured = capsys.readouterr()
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["processed"]) == 1 and summary["refused"][0]["file"] == "notes.txt"
    series_dir = out / summary["processed"][0]["series"]
    record = json.loads((series_dir / "findings.json").read_text())
    assert record["patient"].startswith("PAT-") and record["report"]["verified"]
    assert "[REDACTED]" in (series_dir / "report.txt").read_text()
    written = [p for root in (out, home) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "findings.json" for p in written)
    needles = [PLANTED["PatientName"], "Plantedname", "Johanna", PLANTED["PatientID"], PLANTED["PatientBirthDate"],
               "1947-03-15", PLANTED["InstitutionName"], "Plantedville"]
    haystacks = {str(p): p.read_bytes() for p in written}
    haystacks["logs"] = (caplog.text + captured.out + captured.err).encode()
    for name, blob in haystacks.items():
        for needle in needles:
            assert needle.lower().encode() not in blob.lower(), f"{needle!r} leaked into {name}"
    if record["segmentation"] and record["segmentation"]["file"]:  # the SEG carries the pseudonym, not the patient
        seg = pydicom.dcmread(series_dir / "segmentation.dcm")
        assert str(seg.PatientName).rstrip("^") == record["patient"] and "InstitutionName" not in seg


def test_finetune_records_and_config(tmp_path):
    """Every case's training targets, assembled and filled from the prompts' findings, pass the app's check."""
    from apps.medical.llm import write_finetune_data
    from apps.medical.report import assemble_report

    path = tmp_path / "train.jsonl"
    n_records = write_finetune_data(path, 40, seed=3)
    records = [json.loads(line)["messages"] for line in path.read_text().splitlines()]
    assert len(records) == n_records > 40
    cases = []
    for messages in records:
        assert [m["role"] for m in messages] == ["system", "user", "assistant"]
        target = messages[2]["content"]
        # the adapter is taught slots, never digits, for measured values (only "Nodule <id>" refers by number)
        assert not re.search(r"\d", re.sub(r"Nodule \d+|\[[a-z]+\d*\]", "", target)), target
        user = messages[1]["content"]
        if user.startswith("Nodules found: "):
            cases.append({"n": int(user.splitlines()[0].split(": ")[1]), "summary": target, "lines": [], "findings": []})
            continue
        ident, rest = user.removeprefix("Nodule ").split(": ", 1)  # "Nodule <id>: <type>, <d> mm, <side> <zone>"
        kind, d, loc = rest.split(", ")
        cases[-1]["findings"].append({"id": int(ident), "type": kind, "longest_diameter_mm": float(d.split()[0]),
                                      "volume_mm3": 1.0, "mean_hu": 0.0, "side": loc.split()[0],
                                      "zone": loc.split()[1], "image_number": 7, "center_mm": []})
        cases[-1]["lines"].append(target)
    assert len(cases) == 40 and any(c["n"] == 0 for c in cases) and any(c["n"] > 1 for c in cases)
    for case in cases:
        assert len(case["findings"]) == case["n"]
        text = fill_slots(assemble_report(case["summary"], case["lines"], "Cough."), case["findings"], "Cough.")
        assert verify_report(text, case["findings"], "Cough.").ok, text
    core_config = pytest.importorskip("core.finetune.config")
    cfg = core_config.load_config(Path(__file__).resolve().parents[2] / "apps" / "medical" / "finetune.yaml",
                                  home=tmp_path)
    assert cfg.adapter_name == "medical"


def test_pipeline_on_real_pydicom_files(tmp_path, tiny_medical_model):
    """CT_small and the JPEG-2000 CT are segmented (single-slice volumes); MR and SEG are refused."""
    import shutil

    from pydicom.data import get_testdata_file

    from apps.medical.deid import Pseudonymiser
    from apps.medical.pipeline import NodulePipeline, PipelineConfig

    src = tmp_path / "in" / "deep" / "er"
    src.mkdir(parents=True)
    for name in ("CT_small.dcm", "693_J2KI.dcm", "MR_small.dcm", "liver_1frame.dcm"):
        shutil.copy(get_testdata_file(name), src / name.split(".")[0])
    out = tmp_path / "out"
    pipe = NodulePipeline(PipelineConfig(model_path=tiny_medical_model[0], out_dir=out, write_preview=False),
                          Pseudonymiser(b"test-key"))
    summary = pipe.run_folder(tmp_path / "in")
    assert len(summary["processed"]) == 2
    reasons = sorted(r["reason"] for r in summary["refused"])
    assert reasons == ["modality MR is not CT: series skipped", "modality SEG is not CT: series skipped"]
    for item in summary["processed"]:
        record = json.loads((out / item["series"] / "findings.json").read_text())
        assert record["slices"] == 1 and record["report"]["verified"]
        assert record["nodule_count"] == len(record["nodules"])


def test_slots_are_filled_from_the_findings_and_misplaced_values_are_caught():
    from apps.medical.report import slot_report

    raw = slot_report(FINDINGS, "Screening CT.")
    assert "8.4" not in raw and "[d1]" in raw
    filled = fill_slots(raw, FINDINGS, "Screening CT.")
    assert "Nodule 1: solid, 8.4 mm, right upper, image 23." in filled and "Findings: 2 pulmonary nodules." in filled
    assert verify_report(filled, FINDINGS, "Screening CT.").ok
    # a slot on the wrong nodule, a nodule that does not exist, a swapped location or type all fail
    assert "right upper" not in raw and "[l1]" in raw  # locations are slots too
    for wrong in (raw.replace("solid, [d1]", "solid, [d2]"), raw.replace("[i2]", "[i3]"),
                  raw.replace("Nodule 2: ground glass, [d2] mm, [l2]", "Nodule 2: ground glass, [d2] mm, [l1]"),
                  raw.replace("Nodule 2: ground glass, [d2] mm, [l2]", "Nodule 2: ground glass, [d2] mm, right upper"),
                  raw.replace("[l2]", "[l3]"), raw.replace("image [i2].", "image [i2"),
                  raw.replace("largest [d1] mm (solid", "largest [d1] mm (ground glass"),   # the impression's
                  raw.replace("largest [d1] mm (solid, [l1])", "largest [d1] mm (solid, [l2])"),  # nodule is the
                  raw.replace("largest [d1] mm", "largest [d2] mm"),                        # largest one
                  raw.replace("Nodule 1: solid", "Nodule 1: part-solid")):
        assert not verify_report(fill_slots(wrong, FINDINGS, "Screening CT."), FINDINGS, "Screening CT.").ok, wrong
    out = make_report(FINDINGS, None, lambda f, h, a: slot_report(f, h))
    assert out["source"] == "llm:medical" and out["attempts"][0]["model_text"] != out["text"]
