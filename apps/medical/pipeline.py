"""End to end: DICOM folder -> per-series findings.json, DICOM-SEG, verified report, dashboard preview.

Output layout (``out/``)::

    summary.json                     series processed + refused (reason, file), all pseudonymised
    <series pseudonym>/findings.json nodules, geometry, timings, report check result
    <series pseudonym>/segmentation.dcm   DICOM-SEG over the source series (when nodules were found)
    <series pseudonym>/report.txt    the released report
    <series pseudonym>/preview.npz   canonical HU volume + label map for the dashboard

No identifying header value is written: outputs are keyed by keyed-hash pseudonyms and every text goes
through the series' :class:`~apps.medical.deid.Redactor`. A failure in one series becomes a refusal
with its reason; the others are still processed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.io import atomic_path, write_text_atomic

from .deid import Pseudonymiser, Redactor
from .ingest import CTSeries, SeriesProblem, load_volume, scan_folder
from .postprocess import PostprocessConfig, extract_findings
from .report import ReportConfig, make_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    model_path: Path
    out_dir: Path
    history: str | None = None
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    write_preview: bool = True


class NoduleDetector:
    """The trained models applied to one volume: first-stage probability map, components measured into
    findings, and the second-stage classifier's scores when the checkpoint carries one."""

    def __init__(self, model_path: Path, use_classifier: bool = True, flip_tta: bool | None = None,
                 blob_min_response: float | None = None):
        from .fpr import classifier_from_checkpoint
        from .model import network_from_checkpoint, read_checkpoint

        ckpt = read_checkpoint(model_path)  # once: every part below comes from the same file
        self.net, self.model_cfg = network_from_checkpoint(ckpt)
        self.classifier = classifier_from_checkpoint(ckpt) if use_classifier else None
        point = ckpt.get("operating_point") if use_classifier else None
        self.operating_threshold: float | None = point["threshold"] if point else None
        # Recorded in the checkpoint with the second stage (``train-fpr --flip-tta``), so that the classifier is
        # trained and the operating point chosen on the same probability maps the pipeline later computes.
        # ``flip_tta`` overrides it only for training that second stage. The same holds for the blob
        # candidates (``train-fpr --blob-candidates``): the classifier is only trained to judge those it has seen.
        recorded = (ckpt.get("inference") or {}) if use_classifier else {}
        self.flip_tta = bool(recorded.get("flip_tta", False)) if flip_tta is None else flip_tta
        self.blob_min_response = recorded.get("blob_min_response") if blob_min_response is None else blob_min_response

    def canonical(self, hu_native: np.ndarray, native_affine: np.ndarray):
        """HU on the analysis grid (LPS, isotropic) and the network's scaled input."""
        from .transforms import canonical_transforms, scale_transform, to_metatensor

        hu_c = canonical_transforms(("image",), self.model_cfg.spacing_mm)({"image": to_metatensor(hu_native, native_affine)})["image"]
        return hu_c, scale_transform()({"image": hu_c.clone()})["image"]

    def probability(self, scaled) -> np.ndarray:
        from .model import predict_probability

        return predict_probability(self.net, scaled, self.model_cfg, flip_tta=self.flip_tta)

    def findings(self, prob: np.ndarray, hu_c, scaled, native_affine: np.ndarray, native_shape: tuple[int, int, int],
                 image_numbers: list[int], cfg: PostprocessConfig):
        affine_c = np.asarray(hu_c.affine, dtype=float)
        if cfg.min_score is None and self.operating_threshold is not None:
            cfg = dataclasses.replace(cfg, min_score=self.operating_threshold)
        if cfg.blob_min_response is None and self.blob_min_response is not None:
            cfg = dataclasses.replace(cfg, blob_min_response=self.blob_min_response)
        rescore = None
        if self.classifier is not None:
            rescore = lambda found: self.classifier.rescore(found, scaled, prob, affine_c)  # noqa: E731
        return extract_findings(prob, hu_c.numpy()[0], affine_c, native_affine, native_shape, image_numbers, cfg,
                                rescore=rescore)


class NodulePipeline:
    def __init__(self, cfg: PipelineConfig, pseudonymise: Pseudonymiser, generate_report=None):
        self.cfg = cfg
        self.pseudonymise = pseudonymise
        self.generate_report = generate_report or _unavailable
        self.detector = NoduleDetector(cfg.model_path)
        self.model_cfg = self.detector.model_cfg

    def run_folder(self, folder: Path, skip_series: set[str] | None = None) -> dict:
        folder = Path(folder)
        series_list, problems = scan_folder(folder, lambda uid: self.pseudonymise(uid, "SER"))
        redact = Redactor([v for s in series_list for v in s.phi.values()])
        processed = []
        for series in series_list:
            key = self.pseudonymise(series.series_uid, "SER")
            if skip_series and key in skip_series:
                continue
            try:
                result = self.process_series(series, key, redact)
            except Exception as exc:
                log.exception("series %s failed", key)
                result = SeriesProblem(key, f"processing failed ({type(exc).__name__}: {redact(str(exc))[:200]})",
                                       series.files[0].name, "CT")
            if isinstance(result, SeriesProblem):
                problems.append(result)
            else:
                processed.append(result)
        summary = {"processed": processed,
                   "refused": [{**p.as_dict(), "reason": redact(p.reason), "file": redact(p.file)} for p in problems]}
        write_text_atomic(Path(self.cfg.out_dir) / "summary.json", json.dumps(summary, indent=1))
        log.info("%d series processed, %d refused", len(processed), len(problems))
        return summary

    def process_series(self, series: CTSeries, key: str, redact: Redactor) -> dict | SeriesProblem:
        from .seg_output import native_label_map, write_segmentation

        timings = {}
        t0 = time.perf_counter()
        hu, problem = load_volume(series, key)
        if problem:
            return problem
        hu_c, scaled = self.detector.canonical(hu, series.affine)
        affine_c = np.asarray(hu_c.affine, dtype=float)
        timings["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        prob = self.detector.probability(scaled)
        timings["inference_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        image_numbers = [int(h.get("InstanceNumber", i + 1) or i + 1) for i, h in enumerate(series.headers)]
        hu_np = hu_c.numpy()[0]
        findings, labels_c = self.detector.findings(prob, hu_c, scaled, series.affine, series.shape, image_numbers,
                                                    self.cfg.postprocess)
        nodules = [f.as_dict() for f in findings]
        timings["postprocess_s"] = time.perf_counter() - t0
        first = series.headers[0]
        patient = self.pseudonymise(f"{first.get('PatientID', '')}|{first.get('PatientName', '')}", "PAT")
        history = redact(self.cfg.history) if self.cfg.history else None
        t0 = time.perf_counter()
        report = make_report(nodules, history, self.generate_report, self.cfg.report)
        timings["report_s"] = time.perf_counter() - t0
        report["text"] = redact(report["text"])
        for attempt in report["attempts"]:
            if "text" in attempt:
                attempt["text"] = redact(attempt["text"])
        with atomic_path(Path(self.cfg.out_dir) / key, is_dir=True) as tmp:
            segmentation = None
            if findings:
                t0 = time.perf_counter()
                try:  # the findings and report still go out when the SEG cannot be built
                    labels_native = native_label_map(labels_c, affine_c, series.affine, series.shape)
                    seg_uid = write_segmentation(tmp / "segmentation.dcm", series.headers, labels_native, findings, patient)
                    segmentation = {"file": "segmentation.dcm", "sop_instance_uid": seg_uid}
                except Exception as exc:  # noqa: BLE001 - e.g. a source without FrameOfReferenceUID, which the SEG IOD needs
                    segmentation = {"file": None, "error": redact(f"{type(exc).__name__}: {exc}")[:300]}
                    log.warning("series %s: DICOM-SEG not written (%s)", key, type(exc).__name__)
                timings["seg_s"] = time.perf_counter() - t0
            record = {
                "series": key, "patient": patient, "study": self.pseudonymise(str(first.get("StudyInstanceUID", "")), "STU"),
                "modality": "CT", "slices": len(series.files),
                "native_spacing_mm": [round(v, 4) for v in series.spacing_mm],
                "analysis_spacing_mm": self.model_cfg.spacing_mm,
                "nodule_count": len(nodules), "nodules": nodules,
                "segmentation": segmentation,
                "report": {k: v for k, v in report.items() if k != "text"},
                "timings_s": {k: round(v, 3) for k, v in timings.items()},
                "coordinates": "patient LPS mm (DICOM)",
                "note": "model trained on synthetic CT only; not for clinical use",
            }
            (tmp / "findings.json").write_text(json.dumps(record, indent=1))
            (tmp / "report.txt").write_text(report["text"] + "\n")
            if self.cfg.write_preview:
                np.savez_compressed(tmp / "preview.npz", hu=np.clip(hu_np, -1024, 3071).astype(np.int16),
                                    labels=labels_c.astype(np.int16), spacing_mm=np.float32(self.model_cfg.spacing_mm))
        log.info("series %s: %d nodule(s), report %s (verified=%s) in %.2f s", key, len(nodules), report["source"],
                 report["verified"], timings["report_s"])
        return {"series": key, "nodule_count": len(nodules), "report_source": report["source"],
                "report_verified": report["verified"], "timings_s": record["timings_s"]}


def _unavailable(findings, history, attempt):
    raise ConnectionError("no model client configured")
