"""Benchmark: push 100 crops to Label Studio, then ingest 100 annotated tasks.

Each task is built the way ``activeseg push`` builds it (``activeseg.workflows.push``): 4
z-slices of a 3-channel 64x64 crop as RGB PNGs with doubt marks burned in, an overview image,
a caption and brush pre-annotations of ~5 instances per slice, imported with the predictions
inline. The push (image upload + task import) is compared with a 5 s target; rendering is
reported apart. The ingest times ``changed_tasks`` plus turning every annotation into the
crop's sparse labels.

Uses the server at LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY when both are set, otherwise starts
one from .venv-ls on a free port with a temporary data directory (its startup is not timed).

    .venv/bin/python benchmarks/bench_push.py [--tasks 100] [--slices 4] [--size 64] [--inline]
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

from activeseg.labelstudio.brush import instances_to_results
from activeseg.labelstudio.client import LabelStudioClient, latest_update
from activeseg.labelstudio.labeling import labeling_config, status_result
from activeseg.labelstudio.render import channel_limits, overview_image, png_bytes
from activeseg.labelstudio.server import LabelStudioServer
from activeseg.workflows.ingest import labels_from_results
from activeseg.workflows.push import CropTask, relabel_shown, render_pages, upload_and_import

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


def crop_task(crop: dict[str, np.ndarray], number: int, slices: list[int]) -> CropTask:
    """Return one crop as the task the product pushes."""
    raw = crop["raw"]
    images = render_pages(raw, slices, slices, crop["uncertainty"], 1.0, 0, f"c{number}")
    view = overview_image(raw, channel_limits(raw), slices, slices, 0, crop["uncertainty"])
    overview = {f"c{number}_overview.png": png_bytes(view)}
    shown, _ = relabel_shown(crop["labels"][slices], 32)
    prediction = {"result": instances_to_results(shown), "score": 1.0 / (1 + number)}
    data = {"caption": f"crop {number}", "crop_id": number, "round": 0, "slices": slices}
    return CropTask(number, slices, slices, images, overview, data, prediction, {})


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
        "--inline", action="store_true", help="put images in the task data, do not upload"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    crops = [synthetic_crop(rng, args.slices, args.size) for _ in range(args.tasks)]
    slices = list(range(args.slices))
    times: dict[str, float] = {}
    with connection() as client:
        project = client.create_project(f"bench {uuid.uuid4().hex[:8]}", labeling_config())
        with timed("render + encode", times):
            tasks = [crop_task(crop, t, slices) for t, crop in enumerate(crops)]
        with timed("push", times):
            mode = "inline" if args.inline else "upload"
            task_ids = upload_and_import(client, project, tasks, mode)
        since = latest_update(client.changed_tasks(project))
        for task, answer in zip(task_ids, tasks, strict=True):
            assert answer.prediction is not None
            client.create_annotation(task, [*answer.prediction["result"], status_result("done")])
        with timed("changed_tasks", times):
            changed = client.changed_tasks(project, since)
        with timed("decode annotations", times):
            shape = (args.slices, args.size, args.size)
            for changed_task in changed:
                for annotation in changed_task["annotations"]:
                    labels_from_results(
                        annotation["result"],
                        slices,
                        shape,
                        task=changed_task["id"],
                        allow_empty=False,
                    )
    n_images = sum(len(t.images) + len(t.overview) for t in tasks)
    report(times, n_images, len(changed), args)


def report(times: dict[str, float], n_images: int, n_changed: int, args: Any) -> None:
    """Print the timings, the push total and its ratio to the 5 s target."""
    for label, seconds in times.items():
        print(f"{label:>20}: {seconds:6.2f} s")
    push = times["push"]
    ingest = times["changed_tasks"] + times["decode annotations"]
    print(
        f"push of {args.tasks} tasks ({n_images} images, {args.slices} slices of "
        f"{args.size}x{args.size}, ~{INSTANCES} instances): {push:.2f} s = "
        f"{push / PUSH_TARGET_S:.2f} x the {PUSH_TARGET_S:.0f} s target"
    )
    print(f"ingest of {n_changed} annotated tasks (changed_tasks + decode): {ingest:.2f} s")


if __name__ == "__main__":
    main()
