"""Medical fixtures: small synthetic CT series written as real DICOM, and a tiny MONAI model trained
for a few iterations on them (real UNet, real DiceCE loss, real nodule-balanced patch sampling)."""
from __future__ import annotations

import pytest

from apps.medical.data import SynthConfig

# Small enough for 2 shared cores: 64x64 slices, 40 mm of chest.
SMALL = SynthConfig(rows=64, cols=64, extent_z_mm=40.0, pixel_spacing_mm=(1.2, 1.5),
                    slice_thicknesses_mm=(1.25, 2.0, 2.5), nodules_per_case=(1, 2))
PLANTED = {"PatientName": "Plantedname^Johanna", "PatientID": "PID-99887766",
           "PatientBirthDate": "19470315", "InstitutionName": "Plantedville General Hospital"}


@pytest.fixture(scope="session")
def synth_cases(tmp_path_factory):
    from apps.medical.data import generate_cases

    out = tmp_path_factory.mktemp("med_synth")
    records = generate_cases(out, 2, seed=11, config=SMALL, progress=False)
    return out, records


@pytest.fixture(scope="session")
def tiny_medical_model(tmp_path_factory, synth_cases):
    from apps.medical.model import ModelConfig, TrainConfig, train

    data, _ = synth_cases
    path = tmp_path_factory.mktemp("med_model") / "model.pt"
    summary = train(TrainConfig(data_dir=data, out=path, iterations=3, samples_per_case=2, log_every=1,
                                model=ModelConfig(spacing_mm=1.0, patch=32, channels=(8, 16, 32), strides=(2, 2))))
    return path, summary
