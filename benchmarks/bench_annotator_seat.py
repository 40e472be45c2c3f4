"""Annotation effort to fix a crop's split and merge errors: old task layout versus new.

Synthetic MCFO crops (``generate_mcfo``) get a model prediction made from their ground truth
with two known errors: the largest neuron split in two at its middle z, and the next two
merged into one. The model flags those instances and is unsure around them (mutual
information 1 there, low noise elsewhere). Both layouts label the same slices (the
``labelstudio.slices`` = 4 where the model is most unsure, edge slices avoided), so the
voxels to repaint on them are the same; what differs is what the annotator can see:

- old: the 4 label slices as isolated pages;
- new: every slice of the crop as pages (the default), opening on the label slice with the
  most flagged neurons (``plan_pages``); also with only 3 context slices around the label
  slices ("new ±3").

For every flagged instance: is it on a page at all; can it be followed through its whole
z-extent in the crop on the task's pages (the split and merge notes ask exactly that); and
how many of its z-slices are shown, versus left to another tool. A split is only decided where
its two pieces meet in z; a merge only by following both neurons apart.

    .venv/bin/python benchmarks/bench_annotator_seat.py [--crops 12] [--depth 32] [--size 64]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from activeseg.core.uncertainty import choose_slices
from activeseg.data.synthetic import generate_mcfo
from activeseg.workflows.annotators import correction_effort
from activeseg.workflows.push import plan_pages, start_page

LABEL_SLICES = 4
GOAL = 1.0  # every flagged error followable in z without leaving the task


@dataclass(frozen=True)
class Crop:
    """A crop's truth, the corrupted prediction, its uncertainty and the flagged ids."""

    truth: npt.NDArray[np.uint32]
    predicted: npt.NDArray[np.uint32]
    uncertainty: npt.NDArray[np.float64]
    flagged: list[int]


def corrupted(seed: int, depth: int, size: int) -> Crop:
    """Return a synthetic crop whose prediction splits its largest neuron and merges two more."""
    truth = generate_mcfo((depth, size, size), 6, seed).instances.labels.astype(np.uint32)
    rng = np.random.default_rng(seed)
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    big, second, third = (int(i) for i in ids[np.argsort(-sizes)][:3])
    predicted = truth.copy()
    zs = np.nonzero(truth == big)[0]
    cut = int(np.median(zs))
    piece = int(truth.max()) + 1
    predicted[(truth == big) & (np.arange(depth)[:, None, None] >= cut)] = piece
    predicted[truth == third] = second
    uncertainty = rng.random(truth.shape) * 0.05
    junction = (truth == big) & (np.abs(np.arange(depth)[:, None, None] - cut) <= 1)
    uncertainty[junction | (truth == third)] = 1.0
    return Crop(truth, predicted, uncertainty, [big, piece, second])


def z_extent(labels: npt.NDArray[np.uint32], ident: int) -> set[int]:
    """Return the z-slices an instance occupies."""
    return {int(z) for z in np.nonzero((labels == ident).any(axis=(1, 2)))[0]}


def layout_effort(crop: Crop, pages: list[int]) -> dict[str, float]:
    """Return what the annotator sees of the flagged instances with these pages."""
    shown, seen, followable, outside = set(pages), 0, 0, 0
    fractions = []
    for ident in crop.flagged:
        extent = z_extent(crop.predicted, ident)
        seen += bool(extent & shown)
        followable += extent <= shown
        fractions.append(len(extent & shown) / len(extent))
        outside += len(extent - shown)
    count = len(crop.flagged)
    return {
        "pages": len(pages),
        "flagged on a page": seen / count,
        "followable in z": followable / count,
        "z-extent shown": float(np.mean(fractions)),
        "slices left to another tool": outside,
    }


def main() -> None:
    """Run the comparison and print the numbers and the ratio to the goal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=12)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    started = time.perf_counter()
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new ±3": [], "new": []}
    repaint = []
    for seed in range(args.crops):
        crop = corrupted(seed, args.depth, args.size)
        edge = 1
        slices = [z + edge for z in choose_slices(crop.uncertainty[edge:-edge], LABEL_SLICES)]
        shown = crop.predicted[slices]
        first = start_page(shown, slices, set(crop.flagged))
        rows["old"].append(layout_effort(crop, slices))
        rows["new ±3"].append(layout_effort(crop, plan_pages(args.depth, slices, first, 3)))
        rows["new"].append(layout_effort(crop, plan_pages(args.depth, slices, first)))
        repaint.append(correction_effort(shown, crop.truth[slices]))
    keys = list(rows["old"][0])
    print(
        f"{args.crops} synthetic crops {args.depth}x{args.size}x{args.size}, 3 flagged instances "
        f"each (a split in two pieces, a merge), {LABEL_SLICES} label slices"
    )
    print(f"{'layout':8s}" + "".join(f"{k:>30s}" for k in keys))
    means = {
        name: {k: float(np.mean([r[k] for r in rs])) for k in keys} for name, rs in rows.items()
    }
    for name, row in means.items():
        print(f"{name:8s}" + "".join(f"{row[k]:30.3f}" for k in keys))
    print(f"voxels to repaint on the label slices (both layouts): {np.mean(repaint):.1f} per crop")
    old, new = means["old"]["followable in z"], means["new"]["followable in z"]
    ratio = f"{new / old:.2f}x" if old else "n/a (old: none)"
    print(
        f"flagged errors followable in z without leaving the task: old {old:.3f}, new {new:.3f} "
        f"(new/old {ratio}); ratio to the goal {GOAL:.1f}: {new / GOAL:.3f}"
    )
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
