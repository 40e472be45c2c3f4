"""The Label Studio client against a real server: push crops, read back, ingest changes."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from activeseg.errors import LabelStudioError
from activeseg.labelstudio.brush import instances_to_results, results_to_instances
from activeseg.labelstudio.client import (
    LabelStudioClient,
    deleted_annotations,
    latest_update,
)
from activeseg.labelstudio.labeling import labeling_config, offered_labels, task_status
from activeseg.labelstudio.render import channel_limits, doubt_heat, png_bytes, render_rgb


def decode(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels (N, H, W), has_regions) of brush results (overlaps are tested apart)."""
    instances, has_regions = results_to_instances(*args, **kwargs)
    return instances.labels, has_regions


pytestmark = pytest.mark.integration

SLICES, HEIGHT, WIDTH = 3, 24, 32


def crop_labels(seed: int) -> np.ndarray:
    """Return (SLICES, HEIGHT, WIDTH) uint32 instance ids: a few bars that differ by seed."""
    labels = np.zeros((SLICES, HEIGHT, WIDTH), dtype=np.uint32)
    for z in range(SLICES):
        labels[z, 2 + seed : 6 + seed, 3:25] = 1
        labels[z, 8:20, 10 + z + seed] = 2 + seed
    return labels


def slice_images(seed: int, prefix: str) -> dict[str, bytes]:
    """Return {name: PNG} of the RGB slices and of a single-hue doubt image of a crop."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 4096, (3, SLICES, HEIGHT, WIDTH)).astype(np.uint16)
    limits = channel_limits(raw)
    images = {}
    for z in range(SLICES):
        images[f"{prefix}_s{z}.png"] = png_bytes(render_rgb(raw[:, z], limits))
        uncertainty = rng.random((HEIGHT, WIDTH))
        images[f"{prefix}_u{z}.png"] = png_bytes(doubt_heat(uncertainty, 1.0))
    return images


@pytest.fixture(scope="module")
def project(ls_client: LabelStudioClient) -> int:
    """Return a fresh project with the activeseg labeling config."""
    return ls_client.ensure_project(f"test {uuid.uuid4().hex[:8]}", labeling_config())


@pytest.fixture(scope="module")
def pushed(ls_client: LabelStudioClient, project: int) -> dict[str, Any]:
    """Push 4 crops (images, tasks, brush pre-annotations); return what was pushed."""
    images: dict[str, bytes] = {}
    for seed in range(4):
        images.update(slice_images(seed, f"c{seed}"))
    urls = ls_client.upload_images(project, images)
    tasks = [
        {
            "data": {
                "images": [urls[f"c{seed}_s{z}.png"] for z in range(SLICES)],
                "overview": [urls[f"c{seed}_u0.png"]],
                "labels": offered_labels(8),
                "caption": f"crop {seed}",
                "napari": "napari",
            },
            "meta": {"crop": seed},
        }
        for seed in range(4)
    ]
    task_ids = ls_client.import_tasks(project, tasks)
    predictions = [
        {"task": task, "result": instances_to_results(crop_labels(seed)), "score": 0.1 * seed}
        for seed, task in enumerate(task_ids)
    ]
    ls_client.import_predictions(project, predictions)
    return {"images": images, "urls": urls, "tasks": tasks, "task_ids": task_ids}


def test_ensure_project_finds_the_project_again(ls_client: LabelStudioClient, project: int) -> None:
    title = ls_client.sdk.projects.get(id=project).title
    assert title is not None
    assert ls_client.ensure_project(title, labeling_config()) == project
    # A changed config is applied to the same project.
    changed = labeling_config().replace('size="5"', 'size="4"')
    assert ls_client.ensure_project(title, changed, project_id=project) == project
    assert 'size="4"' in (ls_client.sdk.projects.get(id=project).label_config or "")


def test_uploaded_images_are_served_with_the_token(
    ls_client: LabelStudioClient, pushed: dict[str, Any]
) -> None:
    assert set(pushed["urls"]) == set(pushed["images"])
    for name, url in pushed["urls"].items():
        assert url.startswith("/data/upload/")
        assert ls_client.fetch(url) == pushed["images"][name]


def test_images_are_not_served_without_the_token(
    ls_connection: Any, pushed: dict[str, Any]
) -> None:
    anonymous = LabelStudioClient(ls_connection.url, "not-the-token-000")
    with pytest.raises(LabelStudioError, match="401") as caught:
        anonymous.fetch(next(iter(pushed["urls"].values())))
    assert "not-the-token-000" not in str(caught.value)


def test_tasks_and_predictions_read_back(
    ls_client: LabelStudioClient, pushed: dict[str, Any]
) -> None:
    for seed, task_id in enumerate(pushed["task_ids"]):
        task = ls_client.get_task(task_id)
        assert task["data"] == pushed["tasks"][seed]["data"]
        assert task["meta"] == {"crop": seed}
        [prediction] = task["predictions"]
        assert prediction["score"] == pytest.approx(0.1 * seed)
        labels, has_regions = decode(prediction["result"], SLICES, HEIGHT, WIDTH, task=task_id)
        np.testing.assert_array_equal(labels, crop_labels(seed))
        assert has_regions.all()


def test_predictions_the_server_drops_are_an_error(
    ls_client: LabelStudioClient, project: int, pushed: dict[str, Any]
) -> None:
    result = instances_to_results(crop_labels(0))
    # Label values are the task's own (dynamic labels); a control the config lacks is dropped.
    result[0]["from_name"] = "no_such_control"
    with pytest.raises(LabelStudioError, match="kept only 0"):
        ls_client.import_predictions(project, [{"task": pushed["task_ids"][0], "result": result}])


def test_changed_tasks_returns_edits_skips_updates_and_deletions(
    ls_client: LabelStudioClient, project: int, pushed: dict[str, Any]
) -> None:
    edited, skipped, updated, untouched = pushed["task_ids"]
    since = latest_update(ls_client.changed_tasks(project))
    assert since is not None

    # An annotator corrects the pre-annotation of crop 0: neuron 2 becomes neuron 5.
    corrected = crop_labels(0)
    corrected[corrected == 2] = 5
    status = {"from_name": "status", "to_name": "image", "type": "choices"}
    done = [*instances_to_results(corrected), {**status, "value": {"choices": ["done"]}}]
    edit_id = ls_client.create_annotation(edited, done)
    skip_id = ls_client.create_annotation(skipped, [], was_cancelled=True)
    update_id = ls_client.create_annotation(updated, instances_to_results(crop_labels(2)))
    ls_client.update_annotation(update_id, instances_to_results(crop_labels(1)))

    changed = {task["id"]: task for task in ls_client.changed_tasks(project, since)}
    assert set(changed) == {edited, skipped, updated}
    assert untouched not in changed

    [edit] = changed[edited]["annotations"]
    labels, _ = decode(edit["result"], SLICES, HEIGHT, WIDTH, task=edited)
    np.testing.assert_array_equal(labels, corrected)
    assert task_status(edit["result"]) == "done"
    assert edit["id"] == edit_id

    [skip] = changed[skipped]["annotations"]
    assert (skip["id"], skip["was_cancelled"]) == (skip_id, True)

    [update] = changed[updated]["annotations"]
    labels, _ = decode(update["result"], SLICES, HEIGHT, WIDTH, task=updated)
    np.testing.assert_array_equal(labels, crop_labels(1))

    # Nothing changed since the newest of those: an empty answer.
    later = latest_update(changed.values())
    assert ls_client.changed_tasks(project, later) == []

    ls_client.delete_annotation(update_id)
    [gone] = ls_client.changed_tasks(project, later)
    assert gone["id"] == updated
    assert deleted_annotations(gone, [update_id]) == {update_id}


def test_a_wrong_key_is_a_clear_error(ls_connection: Any) -> None:
    client = LabelStudioClient(ls_connection.url, "wrong-key-123456")
    with pytest.raises(LabelStudioError, match="refused the API key") as caught:
        client.check()
    assert ls_connection.url in str(caught.value)
    assert "wrong-key-123456" not in str(caught.value)


def test_an_unreachable_server_is_a_clear_error() -> None:
    client = LabelStudioClient("http://127.0.0.1:9", "some-key-123456", retry_for=0)
    with pytest.raises(LabelStudioError, match="unreachable"):
        client.check()


def test_the_key_is_never_in_reprs_or_the_server_log(
    ls_client: LabelStudioClient, ls_connection: Any, server_log: Path | None
) -> None:
    ls_client.check()
    key = ls_connection.api_key
    # Booleans only: a failing `assert key not in text` would print the key.
    in_reprs = key in repr(ls_client) or key in repr(ls_connection)
    in_log = server_log is not None and key in server_log.read_text(errors="replace")
    assert not in_reprs, "the API key shows in a repr"
    assert not in_log, "the API key is in the server log"
