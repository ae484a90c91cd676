"""Training (single process and torchrun/DDP), inference, evaluation metrics, service and dashboard."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from apps.medical.evaluation import EvalConfig, evaluate_case, summarise

REPO = Path(__file__).resolve().parents[2]


def test_tiny_training_runs_real_monai_and_predicts(tiny_medical_model, synth_cases):
    from apps.medical.model import load_case, load_checkpoint, predict_probability
    from apps.medical.transforms import canonical_transforms, scale_transform

    path, summary = tiny_medical_model
    assert summary["iterations"] == 3 and np.isfinite(summary["last_loss"])
    assert json.loads(path.with_suffix(".json").read_text())["model_config"]["patch"] == 32
    net, cfg = load_checkpoint(path)
    data, records = synth_cases
    item = canonical_transforms(("image",), cfg.spacing_mm)(load_case(data / records[0]["case_id"]))
    prob = predict_probability(net, scale_transform()({"image": item["image"]})["image"], cfg)
    assert prob.shape == tuple(item["image"].shape[1:]) and 0.0 <= prob.min() <= prob.max() <= 1.0


def test_train_command_under_torchrun_ddp(synth_cases, tmp_path):
    data, _ = synth_cases
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "core.cli", "medical", "train", "--data", str(data), "--model", str(out),
           "--iterations", "2", "--samples", "1", "--patch", "32", "--channels", "8,16,32"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["world_size"] == 2 and meta["cases_per_rank"] == 1 and meta["iterations"] == 2


def test_froc_cpm_and_size_bins_from_known_detections():
    cfg = EvalConfig(model_path=Path("unused"))
    perfect = [{"case": "a", "inference_s": 1.0, "fp_scores": [0.1],
                "nodules": [{"diameter_mm": 4.0, "kind": "solid", "score": 0.9, "dice": 0.7},
                            {"diameter_mm": 12.0, "kind": "solid", "score": 0.95, "dice": 0.9}]}]
    s = summarise(perfect, cfg)
    assert s["cpm"] == pytest.approx(1.0) and s["fp_per_scan"] == 0.0
    assert s["sensitivity_by_size"]["lt5mm"] == {"n": 1, "sensitivity": 1.0}
    assert s["dice_mean_ge5mm"] == 0.9 and s["dice_mean_lt5mm"] == 0.7
    mixed = [{"case": "a", "inference_s": 1.0, "fp_scores": [0.8, 0.6, 0.3],
              "nodules": [{"diameter_mm": 4.0, "kind": "solid", "score": 0.0, "dice": 0.0},
                          {"diameter_mm": 7.0, "kind": "solid", "score": 0.7, "dice": 0.6}]},
             {"case": "b", "inference_s": 1.0, "fp_scores": [],
              "nodules": [{"diameter_mm": 15.0, "kind": "ground_glass", "score": 0.55, "dice": 0.8}]}]
    s = summarise(mixed, cfg)
    assert s["sensitivity_by_size"]["lt5mm"]["sensitivity"] == 0.0
    assert s["sensitivity_by_size"]["gt10mm"]["sensitivity"] == 1.0
    assert s["fp_per_scan"] == 1.0  # two candidates >= 0.5 that hit nothing, over two scans
    assert 0.0 < s["cpm"] < 1.0


def test_evaluate_case_runs_on_a_synthetic_case(tiny_medical_model, synth_cases):
    from apps.medical.model import load_checkpoint

    net, cfg = load_checkpoint(tiny_medical_model[0])
    data, records = synth_cases
    result = evaluate_case(net, cfg, data / records[1]["case_id"], EvalConfig(model_path=tiny_medical_model[0]))
    assert len(result["nodules"]) == len(records[1]["nodules"])
    for n in result["nodules"]:
        assert 0.0 <= n["score"] <= 1.0 and (n["dice"] is None or 0.0 <= n["dice"] <= 1.0)


@pytest.fixture(scope="module")
def service_outputs(tmp_path_factory, tiny_medical_model):
    """Run the real service loop in this thread; a timer sends SIGTERM once the demo study is done."""
    from apps.medical.service import ServiceConfig, run_service

    app_dir = tmp_path_factory.mktemp("med_service")
    (app_dir / "model").mkdir()
    shutil.copy(tiny_medical_model[0], app_dir / "model" / "model.pt")
    cfg = ServiceConfig(app_dir=app_dir, poll_s=0.5, settle_s=0.0)

    def stop_when_done():
        deadline = time.time() + 400
        while time.time() < deadline and not list((app_dir / "outputs").glob("*/findings.json")):
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_when_done, daemon=True).start()
    assert run_service(cfg) == 0  # returns after SIGTERM instead of dying
    return app_dir


def test_service_processes_inbox_and_stops_on_sigterm(service_outputs):
    outputs = list((service_outputs / "outputs").glob("*/findings.json"))
    assert len(outputs) == 1
    record = json.loads(outputs[0].read_text())
    assert record["series"].startswith("SER-") and record["report"]["verified"]
    assert json.loads((service_outputs / "service_status.json").read_text())["series_total"] >= 1
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored


def test_dashboard_shows_study_slices_findings_and_report(service_outputs, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DSV_MEDICAL_OUTPUTS", str(service_outputs / "outputs"))
    app = AppTest.from_file(str(REPO / "apps" / "medical" / "dashboard.py"), default_timeout=120).run()
    assert not app.exception
    assert app.selectbox[0].options[0].startswith("SER-")
    slider = app.slider[0]
    slider.set_value(slider.max // 2).run()
    assert not app.exception
    assert any("Report" in s.value for s in app.subheader)
    assert app.metric[0].value is not None


def _tube_and_spheres(shape=(48, 48, 48)):
    """Lung-like background, two nodules (a big and a small sphere) and one vessel-like tube."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    big = np.linalg.norm(grid - [14, 14, 24], axis=-1) <= 5
    small = np.linalg.norm(grid - [34, 34, 24], axis=-1) <= 1.5
    tube = (np.linalg.norm(grid[..., :2] - [34, 12], axis=-1) <= 1.5) & (grid[..., 2] > 8) & (grid[..., 2] < 40)
    return big, small, tube


def test_patch_weights_balance_nodules_and_single_out_vessels():
    import torch

    from apps.medical.transforms import NoduleBalancedWeightd, scale_transform

    big, small, tube = _tube_and_spheres()
    hu = np.full(big.shape, -850.0, dtype=np.float32)
    hu[big | small | tube] = 40.0
    data = scale_transform()({"image": torch.as_tensor(hu)[None], "label": torch.as_tensor((big | small).astype(np.float32))[None]})
    w = NoduleBalancedWeightd(positive_mass=0.5, hard_negative_mass=0.3)(data)["weight"][0].numpy()
    assert w.sum() == pytest.approx(1.0, abs=1e-4)
    # each nodule gets the same share although the big one has ~40x the voxels
    assert w[big].sum() == pytest.approx(0.25, abs=0.01) and w[small].sum() == pytest.approx(0.25, abs=0.01)
    assert w[tube].sum() == pytest.approx(0.3, abs=0.03)  # the vessel is a hard negative
    background = ~(big | small | tube)
    assert w[background].max() < w[tube].min()
    with pytest.raises(ValueError, match="must be < 1"):
        NoduleBalancedWeightd(positive_mass=0.7, hard_negative_mass=0.3)


def test_elongated_components_score_below_round_ones():
    from apps.medical.postprocess import PostprocessConfig, extract_findings

    big, _small, tube = _tube_and_spheres()
    prob = np.where(big | tube, 0.95, 0.0).astype(np.float32)
    hu = np.where(big | tube, 40.0, -850.0)
    affine = np.eye(4)
    findings, _ = extract_findings(prob, hu, affine, affine, big.shape, list(range(1, 49)), PostprocessConfig(min_score=0.0))
    by_size = sorted(findings, key=lambda f: f.volume_mm3)
    sphere, vessel = (by_size[0], by_size[1]) if by_size[0].elongation < by_size[1].elongation else (by_size[1], by_size[0])
    assert sphere.elongation < 1.2 and vessel.elongation > 4
    assert sphere.score == pytest.approx(0.95, abs=0.01) and vessel.score < 0.05 and vessel.probability == 0.95
    # the default operating point drops the vessel from what is reported
    reported, _ = extract_findings(prob, hu, affine, affine, big.shape, list(range(1, 49)))
    assert [f.elongation for f in reported] == [sphere.elongation]
