"""Streamlit page: pick a study, scroll slices in a lung window with the nodule overlay, read the
findings table and the verified report. Reads what ``dsv medical service`` / ``segment`` write under
``DSV_HOME/medical/outputs`` (or ``DSV_MEDICAL_OUTPUTS``). Only pseudonymised data is shown.

Run: ``streamlit run apps/medical/dashboard.py``
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `streamlit run apps/medical/dashboard.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

LUNG_WINDOW = (-600.0, 1500.0)  # level, width


def outputs_dir() -> Path:
    env = os.environ.get("DSV_MEDICAL_OUTPUTS")
    if env:
        return Path(env)
    from shared.settings import load_settings

    return load_settings().app_dir("medical") / "outputs"


def list_studies(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("*/findings.json"))


def render_slice(hu: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Axial slice k as RGB: lung window, nodules tinted red. Canonical LPS volume -> radiological view."""
    level, width = LUNG_WINDOW
    img = np.clip((hu[:, :, k].T - (level - width / 2)) / width, 0, 1)
    rgb = np.repeat(img[..., None], 3, axis=2)
    mask = labels[:, :, k].T > 0
    rgb[mask] = 0.5 * rgb[mask] + 0.5 * np.array([1.0, 0.1, 0.1])
    return (rgb * 255).astype(np.uint8)  # rows run anterior to posterior, patient left on the right


def main() -> None:
    import streamlit as st

    st.set_page_config(page_title="dsv medical", layout="wide")
    st.title("Lung nodules: CT segmentation and verified reports")
    st.caption("Model trained on synthetic CT only; identifiers are pseudonymised. Not for clinical use.")
    root = outputs_dir()
    studies = list_studies(root)
    if not studies:
        st.info(f"No processed series yet under {root}. Start `dsv medical service` or run `dsv medical segment`.")
        return
    choice = st.selectbox("Series (pseudonymised)", [p.name for p in studies])
    folder = root / choice
    record = json.loads((folder / "findings.json").read_text())
    left, right = st.columns([3, 2])
    with left:
        preview = folder / "preview.npz"
        if preview.exists():
            data = np.load(preview)
            hu, labels = data["hu"], data["labels"]
            nodule_slices = [int(np.round(np.argwhere(labels == i)[:, 2].mean())) for i in np.unique(labels) if i > 0]
            default = nodule_slices[0] if nodule_slices else hu.shape[2] // 2
            k = st.slider("Axial slice", 0, hu.shape[2] - 1, default)
            st.image(render_slice(hu, labels, k), caption=f"slice {k} of {hu.shape[2]} (lung window W1500 L-600)",
                     use_container_width=True)
        else:
            st.warning("No preview volume for this series.")
    with right:
        st.metric("Nodules", record["nodule_count"])
        if record["nodules"]:
            st.dataframe([{k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in n.items()}
                          for n in record["nodules"]], hide_index=True)
        report = record["report"]
        status = "verified against findings" if report.get("verified") else "NOT verified"
        st.subheader(f"Report ({report.get('source')}, {status})")
        if report.get("fallback_reason"):
            st.caption(f"Structured template released: {report['fallback_reason']}")
        st.text((folder / "report.txt").read_text())
        st.json(record["timings_s"], expanded=False)


if __name__ == "__main__":
    main()
