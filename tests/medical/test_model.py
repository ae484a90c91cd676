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


def test_flip_tta_is_recorded_in_the_checkpoint_and_averages_the_mirrored_views(tiny_medical_model, synth_cases, tmp_path):
    import torch

    from apps.medical.fpr import FprTrainConfig, train_classifier
    from apps.medical.model import load_case, predict_probability, update_checkpoint
    from apps.medical.pipeline import NoduleDetector

    model = tmp_path / "model.pt"
    shutil.copy(tiny_medical_model[0], model)
    assert NoduleDetector(model).flip_tta is False
    data, records = synth_cases
    # The second stage learns on the averaged maps, so training it with flip_tta records the setting.
    train_classifier(FprTrainConfig(data_dir=data, model_path=model, iterations=1, batch=4, flip_tta=True))
    tta = NoduleDetector(model)
    recorded = json.loads(model.with_suffix(".json").read_text())["inference"]
    assert tta.flip_tta is True and recorded == {"flip_tta": True, "blob_min_response": None}
    update_checkpoint(model, inference={"flip_tta": False})
    plain = NoduleDetector(model)
    assert plain.flip_tta is False
    item = load_case(data / records[0]["case_id"], native_label=False)
    _, scaled = tta.canonical(item["image"][0].numpy(), np.asarray(item["image"].affine))
    averaged, single = tta.probability(scaled), plain.probability(scaled)
    assert averaged.shape == single.shape and 0.0 <= averaged.min() <= averaged.max() <= 1.0
    assert not np.allclose(averaged, single, atol=1e-4)
    # The mean of the plain view and the three mirrored ones, each mirrored back onto the original grid.
    views = [single] + [np.flip(predict_probability(plain.net, torch.flip(scaled.as_tensor(), (axis,)), plain.model_cfg), axis - 1)
                        for axis in (1, 2, 3)]
    np.testing.assert_allclose(averaged, np.mean(views, axis=0), atol=1e-5)


def test_blob_candidates_and_context_are_recorded_with_the_second_stage_that_learnt_them(tiny_medical_model, synth_cases, tmp_path):
    from apps.medical.fpr import CandidateClassifierConfig, FprTrainConfig, train_classifier
    from apps.medical.model import load_case
    from apps.medical.pipeline import NoduleDetector
    from apps.medical.postprocess import candidate_config

    model = tmp_path / "model.pt"
    shutil.copy(tiny_medical_model[0], model)
    data, records = synth_cases
    train_classifier(FprTrainConfig(data_dir=data, model_path=model, iterations=1, batch=4, blob_min_response=5.0,
                                    ensemble=2, classifier=CandidateClassifierConfig(context=2)))
    detector = NoduleDetector(model)
    assert detector.blob_min_response == 5.0 and detector.flip_tta is False
    assert detector.classifier.cfg.context == 2 and detector.classifier.cfg.in_channels == 4
    assert [m["seed"] for m in json.loads(model.with_suffix(".json").read_text())["classifier_summary"]["ensemble"]] == [0, 1]
    # Without the second stage nothing could judge the blobs, so the first stage alone does not propose them.
    first_stage = NoduleDetector(model, use_classifier=False)
    assert first_stage.blob_min_response is None
    item = load_case(data / records[0]["case_id"], native_label=False)
    native_affine, shape = np.asarray(item["image"].affine, dtype=float), tuple(item["image"].shape[1:])
    hu_c, scaled = detector.canonical(item["image"][0].numpy(), native_affine)
    # A first stage that sees nothing (the 3-iteration model here sees everything, which hides any blob)
    silent = np.zeros(tuple(scaled.shape[1:]), dtype=np.float32)
    numbers = list(range(1, shape[2] + 1))
    with_blobs, _ = detector.findings(silent, hu_c, scaled, native_affine, shape, numbers, candidate_config())
    without, _ = first_stage.findings(silent, hu_c, scaled, native_affine, shape, numbers, candidate_config())
    # The synthetic case's nodules are bright blobs: the filter proposes them, and the second stage scores them.
    assert without == [] and len(with_blobs) >= 1
    assert all(f.classifier_probability is not None for f in with_blobs)
    # The ensemble's score is the mean of its two members' probabilities.
    from apps.medical.fpr import CandidateClassifier, _to_voxels

    members = detector.classifier.nets
    assert len(members) == 2
    centres = _to_voxels([f.center_mm for f in with_blobs], np.asarray(hu_c.affine, dtype=float))
    each = [CandidateClassifier([m], detector.classifier.cfg).probabilities(scaled.numpy()[0], silent, centres)
            for m in members]
    np.testing.assert_allclose([f.score for f in with_blobs], np.mean(each, axis=0), rtol=1e-6)


def test_train_command_under_torchrun_ddp(synth_cases, tmp_path):
    data, _ = synth_cases
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "core.cli", "medical", "train", "--data", str(data), "--model", str(out),
           "--iterations", "2", "--samples", "1", "--patch", "32", "--channels", "8,16,32", "--spacing", "1.0"]
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
    from apps.medical.pipeline import NoduleDetector

    data, records = synth_cases
    result = evaluate_case(NoduleDetector(tiny_medical_model[0]), data / records[1]["case_id"],
                           EvalConfig(model_path=tiny_medical_model[0]))
    assert len(result["nodules"]) == len(records[1]["nodules"])
    for n in result["nodules"]:
        assert 0.0 <= n["score"] <= 1.0 and (n["dice"] is None or 0.0 <= n["dice"] <= 1.0)
        # the nearest-resampled native mask is close to, but not the same as, the phantom's ellipsoid
        assert 0.3 < n["resampled_mask_dice"] <= 1.0


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


def test_patch_centres_balance_nodules_and_single_out_vessels():
    import torch

    from apps.medical.transforms import NoduleBalancedSamplingd, RandNoduleBalancedCropd, scale_transform

    big, small, tube = _tube_and_spheres()
    hu = np.full(big.shape, -850.0, dtype=np.float32)
    hu[big | small | tube] = 40.0
    data = scale_transform()({"image": torch.as_tensor(hu)[None], "label": torch.as_tensor((big | small).astype(np.float32))[None]})
    data = NoduleBalancedSamplingd(spacing_mm=1.0)(data)
    assert sorted(data["nodule_sizes"].tolist()) == sorted([int(big.sum()), int(small.sum())])
    crop = RandNoduleBalancedCropd(("image", "label"), patch=16, num_samples=4000, positive_mass=0.5, hard_negative_mass=0.3)
    crop.set_random_state(seed=0)
    crop.randomize(data)
    centres = np.array(crop.centres)
    share = {name: float(mask[tuple(centres.T)].mean()) for name, mask in (("big", big), ("small", small), ("tube", tube))}
    # each nodule is centred as often as the other although the big one has ~40x the voxels
    assert share["big"] == pytest.approx(0.25, abs=0.03) and share["small"] == pytest.approx(0.25, abs=0.03)
    assert share["tube"] == pytest.approx(0.3, abs=0.03)  # the vessel is a hard negative
    patches = crop(data)
    assert len(patches) == 4000 and all(p["image"].shape == (1, 16, 16, 16) for p in patches[:50])
    assert "hard_voxels" not in patches[0]  # sampling lists do not reach the collate
    with pytest.raises(ValueError, match="must be <= 1"):
        RandNoduleBalancedCropd(("image",), 16, 1, positive_mass=0.8, hard_negative_mass=0.3)


def test_nodules_touching_a_vessel_are_marked_and_can_be_favoured():
    import torch

    from apps.medical.transforms import NoduleBalancedSamplingd, RandNoduleBalancedCropd, scale_transform

    big, small, tube = _tube_and_spheres()
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in big.shape], indexing="ij"), -1).astype(float)
    touching = np.linalg.norm(grid - [34, 16, 24], axis=-1) <= 2.5  # beside the tube at x=34, y=12 (radius 1.5)
    hu = np.full(big.shape, -850.0, dtype=np.float32)
    hu[big | touching | tube] = 40.0
    label = (big | touching).astype(np.float32)
    data = NoduleBalancedSamplingd(spacing_mm=1.0)(
        scale_transform()({"image": torch.as_tensor(hu)[None], "label": torch.as_tensor(label)[None]}))
    by_size = dict(zip(data["nodule_sizes"].tolist(), data["nodule_attached"].tolist()))
    assert by_size == {int(big.sum()): False, int(touching.sum()): True}
    crop = RandNoduleBalancedCropd(("image", "label"), patch=16, num_samples=3000, positive_mass=1.0,
                                   hard_negative_mass=0.0, attached_weight=3.0)
    crop.set_random_state(seed=1)
    crop.randomize(data)
    on_touching = float(touching[tuple(np.array(crop.centres).T)].mean())
    assert on_touching == pytest.approx(0.75, abs=0.03)  # 3 : 1


def _missed_nodule_gradients(loss_name: str, foreground_weight: float):
    """Gradient of a training loss on the logits of a patch where the network is confidently wrong about a
    small nodule (nodule logit -6) and right about the background (-6 too): mean |grad| on the nodule
    voxels, on the background."""
    import torch

    from apps.medical.model import LOSSES

    label = torch.zeros(1, 1, 24, 24, 24)
    label[0, 0, 10:14, 10:14, 10:14] = 1  # 64 voxels, a 3 mm nodule at 0.7 mm
    logits = torch.zeros(1, 2, 24, 24, 24)
    logits[:, 1] = -6.0
    logits.requires_grad_(True)
    LOSSES[loss_name](foreground_weight)(logits, label).backward()
    grad = logits.grad[0, 1].abs()
    nodule = label[0, 0] > 0
    return float(grad[nodule].mean()), float(grad[~nodule].mean())


def test_dice_ce_at_weight_one_is_monais_dice_ce_and_the_weight_lifts_a_missed_nodule():
    import torch
    from monai.losses import DiceCELoss

    from apps.medical.model import LOSSES

    torch.manual_seed(0)
    logits, label = torch.randn(2, 2, 8, 8, 8), (torch.rand(2, 1, 8, 8, 8) > 0.9).float()
    assert float(LOSSES["dice_ce"](1.0)(logits, label)) == pytest.approx(
        float(DiceCELoss(to_onehot_y=True, softmax=True)(logits, label)), rel=1e-6)
    plain, weighted = _missed_nodule_gradients("dice_ce", 1.0), _missed_nodule_gradients("dice_ce", 10.0)
    # the nodule's share of the gradient rises ~7-fold at weight 10 (the Dice term's part is not weighted, and
    # the weighted mean's denominator grows a little)
    assert weighted[0] / weighted[1] > 5 * plain[0] / plain[1]


def test_focal_loss_leaves_the_well_classified_background_out():
    nodule_ce, background_ce = _missed_nodule_gradients("dice_ce", 1.0)
    nodule_focal, background_focal = _missed_nodule_gradients("dice_focal", 1.0)
    # the focal term's gradient on a background voxel at p ~ 0.998 is ~(1 - p)^2 of the cross-entropy's: what
    # remains there is the Dice term's, which spreads over every voxel
    assert background_focal < 0.5 * background_ce
    assert nodule_focal / background_focal > 1.2 * nodule_ce / background_ce


def test_training_with_the_focal_loss_and_an_unknown_loss(synth_cases, tmp_path):
    from apps.medical.model import ModelConfig, TrainConfig, train
    from shared.io import InputError

    data, _ = synth_cases
    tiny = ModelConfig(spacing_mm=1.0, patch=32, channels=(8, 16, 32), strides=(2, 2))
    summary = train(TrainConfig(data_dir=data, out=tmp_path / "focal.pt", iterations=2, samples_per_case=1,
                                loss="dice_focal", foreground_weight=10.0, model=tiny))
    assert summary["iterations"] == 2 and np.isfinite(summary["last_loss"])
    recipe = json.loads((tmp_path / "focal.json").read_text())["recipe"]  # how it was made travels with it
    assert (recipe["loss"], recipe["foreground_weight"], recipe["data_dir"]) == ("dice_focal", 10.0, str(data))
    with pytest.raises(InputError, match="not one of"):
        train(TrainConfig(data_dir=data, out=tmp_path / "x.pt", loss="dice_cee", model=tiny))


def test_an_ensemble_checkpoint_gives_its_members_mean_probability(tiny_medical_model, synth_cases, tmp_path):
    import torch

    from apps.medical.model import (ENSEMBLE_KEY, ModelConfig, TrainConfig, combine_checkpoints, load_case,
                                    load_checkpoint, predict_probability, read_checkpoint, train)
    from apps.medical.transforms import canonical_transforms, scale_transform
    from shared.io import InputError

    first, _ = tiny_medical_model
    data, records = synth_cases
    second = tmp_path / "second.pt"
    train(TrainConfig(data_dir=data, out=second, iterations=1, samples_per_case=1, seed=7,
                      model=ModelConfig(spacing_mm=1.0, patch=32, channels=(8, 16, 32), strides=(2, 2))))
    combine_checkpoints([first, second], tmp_path / "ens.pt")
    ensemble, cfg = load_checkpoint(tmp_path / "ens.pt")
    (net_a, _), (net_b, _) = load_checkpoint(first), load_checkpoint(second)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        mean = (torch.softmax(net_a(x), 1) + torch.softmax(net_b(x), 1)) / 2
        assert torch.allclose(torch.softmax(ensemble(x), 1), mean, atol=1e-5)
        assert not torch.allclose(torch.softmax(net_a(x), 1), mean, atol=1e-3)  # the members do differ
    # through the inference path on a real case (one window: overlapping windows blend log-probabilities,
    # as they blend one network's logits, so the mean is exact only where no windows overlap)
    item = canonical_transforms(("image",), cfg.spacing_mm)(load_case(data / records[0]["case_id"]))
    scaled = scale_transform()({"image": item["image"]})["image"][:, :32, :32, :32]
    pa, pb, pe = (predict_probability(n, scaled, cfg) for n in (net_a, net_b, ensemble))
    assert np.allclose(pe, (pa + pb) / 2, atol=1e-4) and np.abs(pa - pb).max() > 1e-2
    meta = json.loads((tmp_path / "ens.json").read_text())
    assert [m["path"] for m in meta["ensemble_of"]] == [str(first), str(second)]
    assert len(read_checkpoint(tmp_path / "ens.pt")[ENSEMBLE_KEY]) == 1
    with pytest.raises(InputError, match="already an ensemble"):
        combine_checkpoints([tmp_path / "ens.pt", first], tmp_path / "x.pt")
    with pytest.raises(InputError, match="start from one of its members"):
        train(TrainConfig(data_dir=data, out=tmp_path / "y.pt", init_from=tmp_path / "ens.pt", iterations=1,
                          model=cfg))
    other = tmp_path / "other.pt"
    train(TrainConfig(data_dir=data, out=other, iterations=1, samples_per_case=1,
                      model=ModelConfig(spacing_mm=1.0, patch=32, channels=(4, 8, 16), strides=(2, 2))))
    with pytest.raises(InputError, match="differs"):
        combine_checkpoints([first, other], tmp_path / "z.pt")


def test_training_cache_covers_everything_before_the_random_crop():
    """CacheDataset caches up to the first Randomizable or non-Transform: a nested Compose or a plain
    callable there would re-load and resample every case at every step."""
    from monai.transforms import Transform
    from monai.transforms.traits import RandomizableTrait

    from apps.medical.transforms import LoadSyntheticCased, RandNoduleBalancedCropd, training_transforms

    t = training_transforms(0.7, 32, 2, load=(LoadSyntheticCased(),))
    first = t.get_index_of_first(lambda x: isinstance(x, RandomizableTrait) or not isinstance(x, Transform))
    assert isinstance(t.transforms[first], RandNoduleBalancedCropd)
    assert isinstance(t.transforms[0], LoadSyntheticCased)
    masses = training_transforms(0.7, 32, 2, positive_mass=0.6, hard_negative_mass=0.1, attached_weight=4.0)
    [crop] = [x for x in masses.transforms if isinstance(x, RandNoduleBalancedCropd)]
    assert (crop.positive_mass, crop.hard_negative_mass, crop.attached_weight) == (0.6, 0.1, 4.0)


def test_phantom_labels_match_the_written_mask_and_the_analysis_grid(synth_cases):
    from apps.medical.data import nodule_mask
    from apps.medical.model import load_case
    from apps.medical.transforms import LoadSyntheticCased, canonical_transforms, training_transforms

    data, records = synth_cases
    case = data / records[0]["case_id"]
    truth = json.loads((case / "truth" / "nodules.json").read_text())
    written = np.load(case / "truth" / "mask.npy")
    assert written.any()
    assert np.array_equal(nodule_mask(truth["nodules"], np.asarray(truth["affine"]), written.shape), written)
    t = training_transforms(1.0, 32, 1, load=(LoadSyntheticCased(),))
    cached = t({"case_dir": str(case)}, end=t.transforms.index(next(x for x in t.transforms if type(x).__name__ == "RandNoduleBalancedCropd")))
    resampled = canonical_transforms(("image", "label"), 1.0, ("bilinear", "nearest"))(load_case(case))["label"].numpy()[0] > 0.5
    exact = cached["label"].numpy()[0].astype(bool)
    assert exact.shape == resampled.shape and cached["image"].dtype == __import__("torch").float16
    assert 2 * (exact & resampled).sum() / (exact.sum() + resampled.sum()) > 0.7  # same nodules, same place


def test_a_case_phantom_is_redrawn_from_its_seed_and_measures_what_a_vessel_hides(synth_cases):
    from apps.medical.data import SynthConfig, TrueNodule, rebuild_phantom

    from .conftest import SMALL

    data, records = synth_cases
    truth = json.loads((data / records[0]["case_id"] / "truth" / "nodules.json").read_text())
    phantom = rebuild_phantom(truth, SMALL)
    assert [n.center_mm for n in phantom.nodules] == [n["center_mm"] for n in truth["nodules"]]
    with pytest.raises(ValueError, match="do not redraw"):
        rebuild_phantom(truth, SynthConfig())  # other acquisition settings: other nodules
    start, end, radius = max(phantom.vessels, key=lambda v: v[2])
    on_axis = start + 0.6 * (end - start)
    d = 1.6 * radius  # a solid nodule narrower than the vessel, centred on its axis
    hidden = TrueNodule(on_axis.tolist(), d, [d / 2] * 3, "solid")
    assert phantom.vessel_overlap(hidden) == pytest.approx(1.0)
    free = TrueNodule((on_axis + [0, 0, 200.0]).tolist(), d, [d / 2] * 3, "solid")  # far from every vessel
    assert phantom.vessel_overlap(free) == 0.0
    # wholly inside a vessel, a solid nodule changes no voxel of the image: no method can see it
    grid = on_axis + np.stack(np.meshgrid(*[np.linspace(-4, 4, 17)] * 3, indexing="ij"), -1)
    without, _ = phantom.sample(grid)
    phantom.nodules = [hidden]
    with_hidden, label = phantom.sample(grid)
    assert label.any() and np.array_equal(with_hidden, without)


def test_contact_offset_buries_vessel_contact_nodules_as_deep_as_asked():
    from apps.medical.calibration import NoduleSizeModel
    from apps.medical.data import Phantom

    def overlaps(offset):
        phantom = Phantom(np.random.default_rng(3), 45.0, 32.0, NoduleSizeModel.load(), n_nodules=6, small_boost=1.0,
                          vessel_contact=1.0, contact_offset=offset)
        return [phantom.vessel_overlap(n) for n in phantom.nodules]

    touching, buried = overlaps((1.0, 1.0)), overlaps((-0.5, -0.5))
    assert len(touching) >= 4 and len(buried) >= 4
    assert np.median(touching) < 0.05  # surface on the vessel wall (near the hilum another vessel may cross one)
    assert min(buried) > 0.4


def test_the_generator_lists_no_solid_nodule_hidden_inside_a_vessel():
    from apps.medical.calibration import NoduleSizeModel
    from apps.medical.data import Phantom

    def solid_overlaps(min_visible_share):  # nodules centred on a vessel's axis: small ones vanish in it
        phantom = Phantom(np.random.default_rng(5), 45.0, 32.0, NoduleSizeModel.load(), n_nodules=12, small_boost=1.0,
                          vessel_contact=1.0, contact_offset=(-4.0, -4.0), min_visible_share=min_visible_share)
        return [phantom.vessel_overlap(n) for n in phantom.nodules if n.kind == "solid"]

    before, after = solid_overlaps(0.0), solid_overlaps(0.1)
    assert max(before) > 0.9  # without the rule the ground truth lists nodules no reader could see
    assert after and max(after) <= 0.9


def test_synth_refuses_a_share_outside_0_1(tmp_path, capsys):
    from core.cli import main

    assert main(["medical", "synth", "--cases", "1", "--out", str(tmp_path / "s"), "--min-visible-share", "1.5"]) == 2
    assert "--min-visible-share 1.5: must be between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # nothing written


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


def test_candidate_patches_are_centred_and_zero_outside():
    from apps.medical.fpr import candidate_patches

    scaled = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    prob = scaled / scaled.max()
    patches = candidate_patches(scaled, prob, np.array([[5, 6, 7], [0, 0, 0]]), patch=8)
    assert patches.shape == (2, 2, 8, 8, 8)
    assert patches[0, 0, 4, 4, 4] == scaled[5, 6, 7] and patches[0, 1, 4, 4, 4] == prob[5, 6, 7]
    assert patches[1, 0, 4, 4, 4] == scaled[0, 0, 0] and (patches[1, :, :4] == 0).all()  # outside the volume


def test_context_view_is_the_block_mean_of_a_larger_cube_around_the_same_centre():
    import torch

    from apps.medical.fpr import _augment, candidate_patches

    rng = np.random.default_rng(1)
    scaled = rng.normal(size=(30, 32, 34)).astype(np.float32)
    prob = rng.uniform(size=scaled.shape).astype(np.float32)
    centre = np.array([15, 16, 17])
    patches = candidate_patches(scaled, prob, centre[None], patch=8, context=2)
    assert patches.shape == (1, 4, 8, 8, 8)
    assert np.array_equal(patches[:, :2], candidate_patches(scaled, prob, centre[None], patch=8))  # fine view unchanged
    # coarse voxel (4, 4, 4) averages the 2^3 fine voxels from the centre up; (0, 0, 0) the block 8 voxels below
    for view, source in ((2, scaled), (3, prob)):
        assert patches[0, view, 4, 4, 4] == pytest.approx(source[15:17, 16:18, 17:19].mean(), abs=1e-6)
        assert patches[0, view, 0, 0, 0] == pytest.approx(source[7:9, 8:10, 9:11].mean(), abs=1e-6)
    # a shift in training moves both views together: no shift and no turn keeps the centres where they were
    margin = 2
    wide = candidate_patches(scaled, prob, centre[None], patch=8 + 2 * margin, context=2)

    class Centred:  # the generator _augment draws from, pinned to "no shift, no flip, no turn"
        def integers(self, low, high=None, size=None):
            return np.full(size, margin) if size is not None else 0

        def uniform(self):
            return 1.0

    out = _augment(torch.as_tensor(wide), Centred(), patch=8, margin=margin, context=2)
    assert np.allclose(out.numpy(), patches)
    with pytest.raises(ValueError, match="context"):
        from apps.medical.fpr import CandidateClassifierConfig

        CandidateClassifierConfig(context=0)


def test_probability_dropout_blanks_the_probability_channel_of_some_patches_only():
    import torch

    from apps.medical.fpr import blank_probability

    rng = np.random.default_rng(0)
    batch = torch.as_tensor(rng.uniform(0.1, 1.0, (200, 2, 4, 4, 4)).astype(np.float32))
    ct = batch[:, 0].clone()
    assert torch.equal(blank_probability(batch.clone(), rng, 0.0), batch)
    blanked = blank_probability(batch.clone(), rng, 0.5)
    zeroed = (blanked[:, 1] == 0).flatten(1).all(1)
    assert 60 <= int(zeroed.sum()) <= 140 and torch.equal(blanked[~zeroed, 1], batch[~zeroed, 1])
    assert torch.equal(blanked[:, 0], ct)
    assert (blank_probability(batch.clone(), rng, 1.0)[:, 1] == 0).all()
    with_context = torch.ones(50, 4, 2, 2, 2)
    blanked = blank_probability(with_context, rng, 1.0)
    assert (blanked[:, 1::2] == 0).all() and (blanked[:, 0::2] == 1).all()  # both probability views, no CT


def test_second_stage_trains_into_the_checkpoint_and_rescores(tiny_medical_model, synth_cases, tmp_path):
    from apps.medical.fpr import FprTrainConfig, load_classifier, train_classifier
    from apps.medical.pipeline import NoduleDetector

    data, records = synth_cases
    model = tmp_path / "model.pt"
    shutil.copy(tiny_medical_model[0], model)
    shutil.copy(tiny_medical_model[0].with_suffix(".json"), model.with_suffix(".json"))
    assert load_classifier(model) is None
    summary = train_classifier(FprTrainConfig(data_dir=data, model_path=model, iterations=3, batch=4))
    assert summary["iterations"] == 3 and summary["positives"] >= len(records[0]["nodules"]) and summary["negatives"] > 0
    assert json.loads(model.with_suffix(".json").read_text())["classifier_summary"]["iterations"] == 3
    detector = NoduleDetector(model)
    assert detector.classifier is not None
    result = evaluate_case(detector, data / records[0]["case_id"], EvalConfig(model_path=model))
    assert all(0.0 <= n["score"] <= 1.0 for n in result["nodules"])
    from apps.medical.model import load_case
    from apps.medical.postprocess import PostprocessConfig

    item = load_case(data / records[0]["case_id"], native_label=False)
    hu_c, scaled = detector.canonical(item["image"][0].numpy(), np.asarray(item["image"].affine))
    prob = np.zeros(hu_c.shape[1:], dtype=np.float32)
    prob[10:16, 10:16, 5:11] = 0.9  # one candidate wherever the tiny first stage would put none
    found, _ = detector.findings(prob, hu_c, scaled, np.asarray(item["image"].affine), tuple(item["image"].shape[1:]),
                                 list(range(1, item["image"].shape[3] + 1)), PostprocessConfig(min_score=0.0))
    assert len(found) == 1 and found[0].probability == 0.9
    assert found[0].classifier_probability is not None and found[0].score == found[0].classifier_probability
    assert NoduleDetector(model, use_classifier=False).classifier is None
    # The operating point chosen on validation cases becomes the pipeline's reporting threshold.
    from apps.medical.evaluation import store_operating_point

    score = found[0].score
    for threshold, reported in ((score + 1e-6, 0), (score - 1e-6, 1)):
        point = store_operating_point(model, {"threshold_at_1fp_per_scan": threshold, "cases": 2}, "test", True, floor=0.0)
        assert point["threshold"] == threshold
        again, _ = NoduleDetector(model).findings(prob, hu_c, scaled, np.asarray(item["image"].affine),
                                                  tuple(item["image"].shape[1:]), list(range(1, item["image"].shape[3] + 1)),
                                                  PostprocessConfig())
        assert len(again) == reported
