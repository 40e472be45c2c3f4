"""Benchmark: push 100 crops to Label Studio, then ingest 100 annotated tasks.

Each task: 4 z-slices of a 64x64 3-channel crop as RGB PNGs, 4 uncertainty overlays and brush
pre-annotations of ~5 instances per slice. The push (upload images + import tasks + import
predictions) is compared with a 5 s target; the ingest times ``changed_tasks`` plus decoding
every annotation back to instance labels.

Uses the server at LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY when both are set, otherwise starts
one from .venv-ls on a free port with a temporary data directory (its startup is not timed).

    .venv/bin/python benchmarks/bench_push.py [--tasks 100] [--slices 4] [--size 64] [--data-uris]
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from activeseg.labelstudio.brush import instances_to_results, results_to_labels
from activeseg.labelstudio.client import LabelStudioClient, latest_update
from activeseg.labelstudio.labeling import labeling_config
from activeseg.labelstudio.render import (
    channel_limits,
    data_uri,
    overlay_rgba,
    png_bytes,
    render_rgb,
)
from activeseg.labelstudio.server import LabelStudioServer

PUSH_TARGET_S = 5.0
INSTANCES = 5


@contextmanager
def connection() -> Iterator[LabelStudioClient]:
    """Yield a client of LABEL_STUDIO_URL, or of a server started for the benchmark."""
    url, key = os.environ.get("LABEL_STUDIO_URL"), os.environ.get("LABEL_STUDIO_API_KEY")
    if url and key:
        yield LabelStudioClient(url, key)
        return
    key = secrets.token_hex(20)
    started = time.perf_counter()
    with LabelStudioServer(api_key=key) as server:
        print(f"started Label Studio at {server.url} in {time.perf_counter() - started:.1f} s")
        yield LabelStudioClient(server.url, key)


def synthetic_crop(rng: np.random.Generator, slices: int, size: int) -> dict[str, np.ndarray]:
    """Return raw (3, Z, Y, X) uint16, labels (Z, Y, X) uint32 and uncertainty (Z, Y, X)."""
    raw = rng.integers(0, 1000, (3, slices, size, size)).astype(np.uint16)
    labels = np.zeros((slices, size, size), dtype=np.uint32)
    for ident in range(1, INSTANCES + 1):
        row, col = rng.integers(0, size - 8, 2)
        labels[:, row : row + 3, :] = ident  # a horizontal neurite
        labels[:, :, col : col + 2] = ident  # a vertical one, crossing the others
        raw[ident % 3][labels == ident] += 3000
    return {"raw": raw, "labels": labels, "uncertainty": rng.random((slices, size, size))}


def render_crop(crop: dict[str, np.ndarray], prefix: str) -> dict[str, bytes]:
    """Return {name: PNG} of the slices and overlays of one crop."""
    limits = channel_limits(crop["raw"])
    images = {}
    for z in range(crop["raw"].shape[1]):
        images[f"{prefix}_s{z}.png"] = png_bytes(render_rgb(crop["raw"][:, z], limits))
        images[f"{prefix}_u{z}.png"] = png_bytes(overlay_rgba(crop["uncertainty"][z], 1.0))
    return images


def tasks_for(urls: dict[str, str], n_tasks: int, slices: int) -> list[dict[str, Any]]:
    """Return the task dicts (image and overlay URLs per crop)."""
    return [
        {
            "data": {
                "images": [urls[f"c{t}_s{z}.png"] for z in range(slices)],
                "overlays": [urls[f"c{t}_u{z}.png"] for z in range(slices)],
                "caption": f"crop {t}",
            }
        }
        for t in range(n_tasks)
    ]


def timed(label: str, times: dict[str, float]) -> Any:
    """Return a context manager that stores the seconds of its block under ``label``."""

    @contextmanager
    def block() -> Iterator[None]:
        start = time.perf_counter()
        yield
        times[label] = time.perf_counter() - start

    return block()


def main() -> None:
    """Run the benchmark and print its timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--data-uris", action="store_true", help="put images in the task data, do not upload"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    crops = [synthetic_crop(rng, args.slices, args.size) for _ in range(args.tasks)]
    times: dict[str, float] = {}
    with connection() as client:
        project = client.ensure_project(f"bench {uuid.uuid4().hex[:8]}", labeling_config(16))
        with timed("render PNGs", times):
            images: dict[str, bytes] = {}
            for t, crop in enumerate(crops):
                images.update(render_crop(crop, f"c{t}"))
        with timed("encode brush RLE", times):
            results = [instances_to_results(crop["labels"]) for crop in crops]
        with timed("upload images", times):
            if args.data_uris:
                urls = {name: data_uri(png) for name, png in images.items()}
            else:
                urls = client.upload_images(project, images)
        with timed("import tasks", times):
            task_ids = client.import_tasks(project, tasks_for(urls, args.tasks, args.slices))
        with timed("import predictions", times):
            client.import_predictions(
                project, [{"task": t, "result": r} for t, r in zip(task_ids, results, strict=True)]
            )
        since = latest_update(client.changed_tasks(project))
        for task, result in zip(task_ids, results, strict=True):
            client.create_annotation(task, result)
        with timed("changed_tasks", times):
            changed = client.changed_tasks(project, since)
        with timed("decode annotations", times):
            for answer in changed:
                for annotation in answer["annotations"]:
                    results_to_labels(
                        annotation["result"], args.slices, args.size, args.size, task=answer["id"]
                    )
    report(times, len(images), len(changed), args)


def report(times: dict[str, float], n_images: int, n_changed: int, args: Any) -> None:
    """Print the timings, the push total and its ratio to the 5 s target."""
    for label, seconds in times.items():
        print(f"{label:>20}: {seconds:6.2f} s")
    push = times["upload images"] + times["import tasks"] + times["import predictions"]
    ingest = times["changed_tasks"] + times["decode annotations"]
    print(
        f"push of {args.tasks} tasks ({n_images} images, {args.slices} slices of "
        f"{args.size}x{args.size}, ~{INSTANCES} instances): {push:.2f} s = "
        f"{push / PUSH_TARGET_S:.2f} x the {PUSH_TARGET_S:.0f} s target"
    )
    print(f"ingest of {n_changed} annotated tasks (changed_tasks + decode): {ingest:.2f} s")


if __name__ == "__main__":
    main()
