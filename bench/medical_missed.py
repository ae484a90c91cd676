"""The held-out nodules a checkpoint's first stage never proposes (and, with ``--below``, those it proposes
but scores low): their figures and a picture of each.

For every nodule that no candidate matched (the FROC's plateau), prints one JSON line: case, kind, score,
diameter, slice thickness, noise, mean HU inside vs the median of a shell around it, the peak first-stage
probability inside it, and whether it is *attached* as the training sampler defines it (soft tissue 2-4
voxels off its surface: a vessel or the chest wall touching it; ``transforms.NoduleBalancedSamplingd``).
With ``--png`` it also renders each one (lung window, the nodule outlined; the probability map below)
on the axial slice through its centre. SYNTHETIC cases only (the truth comes from the generator).

    OMP_NUM_THREADS=1 python bench/medical_missed.py --model /tmp/med/model4.pt --cases /tmp/med/heldout_s2_24 \\
        --png /tmp/med/missed.png [--below 0.54]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def attached(inside: np.ndarray, scaled: np.ndarray, spacing_mm: float) -> bool:
    """The training sampler's own test, so that the figure says whether ``--attached-weight`` reaches it."""
    from scipy import ndimage

    from apps.medical.transforms import NoduleBalancedSamplingd

    comp = inside.astype(np.int32)
    return NoduleBalancedSamplingd(spacing_mm).attached(comp, 1, ndimage.find_objects(comp)[0], scaled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint (first stage; its second stage scores candidates)")
    parser.add_argument("--cases", required=True, help="folder of synthetic cases (`dsv medical synth`)")
    parser.add_argument("--png", default=None, help="also render the missed nodules into this image")
    parser.add_argument("--below", type=float, default=0.0, metavar="SCORE",
                        help="also list nodules proposed but scored at or below SCORE (for example the held-out "
                             "set's 1 FP/scan threshold, `threshold_at_1fp_per_scan` in bench/medical.py's output)")
    args = parser.parse_args()
    import torch
    from scipy import ndimage

    torch.set_num_threads(1)
    from apps.medical.data import nodule_mask
    from apps.medical.evaluation import EvalConfig, evaluate_case
    from apps.medical.pipeline import NoduleDetector

    model = Path(args.model)
    detector = NoduleDetector(model)
    # Keep what evaluate_case computes for the case (canonical grid, first-stage map): the figures below
    # need the same arrays, and recomputing them ran the first stage twice per case.
    seen: dict = {}
    canonical, probability = detector.canonical, detector.probability

    def remember_canonical(*args):
        seen["canonical"] = canonical(*args)
        return seen["canonical"]

    def remember_probability(scaled):
        seen["prob"] = probability(scaled)
        return seen["prob"]

    detector.canonical, detector.probability = remember_canonical, remember_probability
    missed, attached_all, n_all = [], 0, 0
    for case in sorted(p.parent.parent for p in Path(args.cases).glob("*/truth/nodules.json")):
        truth = json.loads((case / "truth" / "nodules.json").read_text())
        result = evaluate_case(detector, case, EvalConfig(model_path=model))
        hu_c, scaled = seen["canonical"]
        affine, hu = np.asarray(hu_c.affine, dtype=float), hu_c.numpy()[0]
        insides = [nodule_mask([n], affine, hu.shape).astype(bool) for n in truth["nodules"]]
        flags = [attached(m, scaled.numpy()[0], detector.model_cfg.spacing_mm) for m in insides]
        n_all, attached_all = n_all + len(flags), attached_all + sum(flags)
        if all(n["score"] > args.below for n in result["nodules"]):
            continue
        prob = seen["prob"]
        for nodule, scored, inside, flag in zip(truth["nodules"], result["nodules"], insides, flags):
            if scored["score"] > args.below:
                continue
            shell = ndimage.binary_dilation(inside, iterations=4) & ~ndimage.binary_dilation(inside, iterations=1)
            row = {"case": case.name, "kind": nodule["kind"], "diameter_mm": round(nodule["diameter_mm"], 1),
                   "slice_thickness_mm": truth["slice_thickness_mm"], "noise_hu": truth["noise_hu"],
                   "hu_inside": round(float(hu[inside].mean())), "hu_around": round(float(np.median(hu[shell]))),
                   "peak_probability": round(float(prob[inside].max()), 3), "attached": flag,
                   "score": round(float(scored["score"]), 4)}
            print(json.dumps(row), flush=True)
            centre = np.argwhere(inside).mean(0).astype(int)
            missed.append((row, hu, prob, inside, centre))
    never = [m[0] for m in missed if m[0]["score"] == 0]
    print(json.dumps({"model": str(model), "nodules": n_all, "attached": attached_all, "never_proposed": len(never),
                      "never_proposed_attached": sum(r["attached"] for r in never),
                      f"scored_0_to_{args.below:g}": len(missed) - len(never), "data": "SYNTHETIC"}))
    if args.png and missed:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, len(missed), figsize=(3 * len(missed), 6), squeeze=False)
        for k, (row, hu, prob, inside, c) in enumerate(missed):
            view = (slice(max(c[0] - 40, 0), c[0] + 40), slice(max(c[1] - 40, 0), c[1] + 40), c[2])
            axes[0, k].imshow(np.clip(hu[view], -1000, 200).T, cmap="gray", origin="lower")
            axes[0, k].contour(inside[view].T, levels=[0.5], colors="r")
            axes[0, k].set_title(f"{row['case'][-3:]} {row['kind']} {row['diameter_mm']} mm s={row['score']:.2f}", fontsize=8)
            axes[1, k].imshow(prob[view].T, vmin=0, vmax=1, origin="lower")
            for ax in axes[:, k]:
                ax.set_axis_off()
        fig.tight_layout()
        fig.savefig(args.png, dpi=60)


if __name__ == "__main__":
    main()
