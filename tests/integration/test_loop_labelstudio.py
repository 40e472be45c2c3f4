"""The loop through a real Label Studio server: push, annotate through the API, ingest.

One synthetic smoke project goes through round 0 (model-free selection, tasks without
pre-annotations), the simulated annotator answering through the API, and round 1 (ingest,
train, evaluate, score, select, push with pre-annotations). The ingest tests then annotate
round 1's tasks the ways people do: an edited pre-annotation, a skip, malformed ones, an
update, a deletion.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.data.volumes import read_crop_labels, read_ground_truth
from activeseg.labelstudio.brush import instances_to_results, results_to_instances
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.labelstudio.labeling import status_result
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, TaskInfo
from activeseg.workflows import push as push_module
from activeseg.workflows.annotators import answer_in_labelstudio
from activeseg.workflows.ingest import SINCE_SETTING, ingest_annotations
from activeseg.workflows.loop import run_round
from activeseg.workflows.project import Project
from activeseg.workflows.push import latest_round, push_selected, relabel_shown
from activeseg.workflows.score import analysis_path, read_analysis


def decode(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels (N, H, W), has_regions) of brush results (overlaps are tested apart)."""
    instances, has_regions = results_to_instances(*args, **kwargs)
    return instances.labels, has_regions


pytestmark = [pytest.mark.integration, pytest.mark.slow]
ProjectMaker = Callable[..., Project]


def tasks_of_round(project: Project, number: int) -> list[TaskInfo]:
    with project.session() as session:
        round_id = pool_rounds.get_round(session, number).id
        return [t for t in pool_tasks.list_tasks(session) if t.round_id == round_id]


@pytest.fixture(scope="module")
def looped(
    environment: None,
    ls_client: LabelStudioClient,
    tmp_path_factory: pytest.TempPathFactory,
    labelstudio_project: ProjectMaker,
) -> Project:
    """Return the project after round 0, API annotation of its tasks, and round 1."""
    project = labelstudio_project(tmp_path_factory.mktemp("loop") / "project")
    run_round(project)
    assert answer_in_labelstudio(project, ls_client) == 2
    run_round(project, batch_size=4)
    return project


def pool_crop(project: Project, crop_id: int) -> CropInfo:
    """Return a crop of the pool."""
    with project.session() as session:
        return pool_volumes.get_crop(session, crop_id)


def png_shape(client: LabelStudioClient, url: str) -> tuple[int, ...]:
    """Return the shape of the image behind a task URL (uploaded file or data URI)."""
    prefix = "data:image/png;base64,"
    data = base64.b64decode(url[len(prefix) :]) if url.startswith(prefix) else client.fetch(url)
    return tuple(np.asarray(Image.open(io.BytesIO(data))).shape)


def test_round_zero_tasks_show_the_crop_without_pre_annotation(
    looped: Project, ls_client: LabelStudioClient
) -> None:
    tasks = tasks_of_round(looped, 0)
    assert len(tasks) == 2
    for task in tasks:
        remote = ls_client.get_task(int(task.ls_task_id or 0))
        assert remote["data"]["crop_id"] == task.crop_id
        crop_z = pool_crop(looped, task.crop_id).origin[0]
        assert remote["data"]["slices"] == [crop_z + z for z in task.slices]
        assert remote["predictions"] == []
        images = remote["data"]["images"]
        assert len(task.slices) == 2 and len(images) == len(task.pushed["pages"]) == 16
        # The smoke crops are 16 x 32 x 32: every page is one RGB slice of the crop.
        assert {png_shape(ls_client, url) for url in images} == {(32, 32, 3)}
        assert png_shape(ls_client, remote["data"]["overview"][0])[2] == 3


def test_round_one_ingested_what_the_annotator_drew(looped: Project) -> None:
    with looped.session() as session:
        volumes = {v.id: v for v in pool_volumes.list_volumes(session)}
        for task in tasks_of_round(looped, 0):
            crop = pool_volumes.get_crop(session, task.crop_id)
            assert (crop.status, crop.labeled_round) == ("labeled", 1)
            truth = read_ground_truth(looped.resolve(volumes[crop.volume_id].path), crop.box)
            labels = read_crop_labels(looped.resolve(str(crop.label_path)))
            shown = list(task.slices)
            assert labels.mask[shown].all() and labels.mask.sum() == len(shown) * 32 * 32
            # Same partition of the shown slices as the truth (ids renumbered 1..K).
            expected, _ = relabel_shown(truth.labels[shown], 32)
            assert np.array_equal(labels.labels[shown], expected)
            assert not labels.labels[~labels.mask].any()


def test_round_one_pushes_pre_annotated_tasks_ranked_by_score(
    looped: Project, ls_client: LabelStudioClient
) -> None:
    tasks = tasks_of_round(looped, 1)
    assert len(tasks) == 4
    with looped.session() as session:
        round_one = pool_rounds.get_round(session, 1)
        ranked = [s for s in pool_rounds.round_scores(session, round_one.id) if s.rank is not None]
    ranks = {s.crop_id: s.rank or 0 for s in ranked}
    for task in tasks:
        remote = ls_client.get_task(int(task.ls_task_id or 0))
        (prediction,) = remote["predictions"]
        assert prediction["score"] == pytest.approx(1 - ranks[task.crop_id] / len(ranked), abs=1e-4)
        assert prediction["model_version"] == "round-1"
        assert "most unsure" in remote["data"]["caption"]
        consensus = read_analysis(analysis_path(looped, 1, task.crop_id), "consensus")
        expected, mapping = relabel_shown(consensus[list(task.slices)], 32)
        pages = task.pushed["pages"]
        decoded, _ = decode(prediction["result"], len(pages), 32, 32)
        assert np.array_equal(decoded[[pages.index(z) for z in task.slices]], expected)
        assert task.pushed["instances"] == {f"n{k}": v for k, v in mapping.items()}


def test_history_shows_both_rounds_and_the_labels_improved_the_model(looped: Project) -> None:
    answer = CliRunner().invoke(app, ["history", "--json", "-p", str(looped.root)])
    assert answer.exit_code == 0, answer.output
    rounds = json.loads(answer.stdout)
    assert [r["round"] for r in rounds] == [0, 1]
    # Round 0 had no labels, so no model: it found no neuron of the val volume (score 0).
    assert rounds[0]["metrics"] == {}
    assert {"AP50", "avF1", "C", "S"} <= set(rounds[1]["metrics"])
    assert rounds[1]["labeled_crops"] == 2
    # Trained on the two crops annotated through Label Studio, round 1 finds val neurons.
    assert rounds[1]["metrics"]["avF1"] > 0.05


def edited(prediction: list[dict[str, Any]], slices: int) -> list[dict[str, Any]]:
    """Return an annotator's fix of a pre-annotation: one neuron painted on every page."""
    labels = np.zeros((slices, 32, 32), np.uint32)
    labels[:, 4:9, 2:30] = 1
    labels[:, 12:30, 20:24] = 2
    return [*instances_to_results(labels), status_result("done")]


def crop_state(project: Project, crop_id: int) -> tuple[str, str | None]:
    with project.session() as session:
        crop = pool_volumes.get_crop(session, crop_id)
    return crop.status, crop.skip_reason


def test_ingest_edits_skips_errors_updates_and_deletions(
    looped: Project, ls_client: LabelStudioClient
) -> None:
    good, skipped, wrong_slice, empty = tasks_of_round(looped, 1)
    # Regions go on pages (item_index); only the label slices' pages are kept.
    n = len(good.pushed["pages"])
    on_labels = [good.pushed["pages"].index(z) for z in good.slices]
    ls = {t.crop_id: int(t.ls_task_id or 0) for t in (good, skipped, wrong_slice, empty)}
    first = ls_client.create_annotation(ls[good.crop_id], edited([], n))
    ls_client.create_annotation(ls[skipped.crop_id], [], was_cancelled=True)
    off_slice = instances_to_results(np.ones((n + 1, 32, 32), np.uint32))[-1:]
    ls_client.create_annotation(ls[wrong_slice.crop_id], off_slice)
    ls_client.create_annotation(ls[empty.crop_id], [status_result("unsure")])

    result = ingest_annotations(looped)
    assert (result.ingested, result.skipped, result.updated) == (1, 1, 0)
    assert len(result.errors) == 2
    assert any(f"task {ls[wrong_slice.crop_id]} " in e and "item_index" in e for e in result.errors)
    assert any(f"task {ls[empty.crop_id]} " in e and "no brush region" in e for e in result.errors)
    assert crop_state(looped, skipped.crop_id)[0] == "skipped"
    assert "skipped the task" in str(crop_state(looped, skipped.crop_id)[1])
    for task in (wrong_slice, empty):
        assert crop_state(looped, task.crop_id) == ("queued", None)
    with looped.session() as session:
        stored = read_crop_labels(
            looped.resolve(str(pool_volumes.get_crop(session, good.crop_id).label_path))
        )
    expected, _ = decode(edited([], n), n, 32, 32)
    assert np.array_equal(stored.labels[list(good.slices)], expected[on_labels])

    # Nothing changed in Label Studio: ingesting again changes nothing (through the CLI), and
    # the two broken tasks are reported again: the cursor waits for them to be fixed.
    again = CliRunner().invoke(app, ["ingest", "--json", "-p", str(looped.root)])
    assert again.exit_code == 2, again.output
    counts = json.loads(again.stdout)
    assert {k: counts[k] for k in ("ingested", "updated", "skipped", "withdrawn")} == dict.fromkeys(
        ("ingested", "updated", "skipped", "withdrawn"), 0
    )
    assert counts["unchanged"] == 4 and len(counts["errors"]) == 2  # round 0's tasks too
    # Even re-reading every task from the start leaves the pool as it is.
    with looped.session() as session:
        pool_settings.set_setting(session, SINCE_SETTING, "2000-01-01T00:00:00+00:00")
    rescan = ingest_annotations(looped)
    assert (rescan.ingested, rescan.updated, rescan.skipped, rescan.unchanged) == (0, 0, 0, 4)
    with looped.session() as session:
        assert len(pool_tasks.annotation_history(session, good.id)) == 1

    # The annotator corrects the first annotation: it supersedes the old one, kept as history.
    # Neuron 4 crosses neuron 3: the voxels painted for both are kept as overlaps.
    corrected = np.zeros((n, 32, 32), np.uint32)
    corrected[:, 0:3, :] = 3
    crossing = np.array([(i, 1, x, 4) for i in range(n) for x in range(5, 9)])
    regions = instances_to_results(corrected, overlaps=crossing)
    ls_client.update_annotation(first, [*regions, status_result("done")])
    assert ingest_annotations(looped).updated == 1
    with looped.session() as session:
        history = pool_tasks.annotation_history(session, good.id)
        crop = pool_volumes.get_crop(session, good.crop_id)
    assert [a.current for a in history] == [False, True]
    assert all(looped.resolve(str(a.label_path)).exists() for a in history)
    stored = read_crop_labels(looped.resolve(str(crop.label_path)))
    assert np.array_equal(stored.labels[list(good.slices)], corrected[on_labels])
    assert {tuple(row) for row in stored.overlaps.tolist()} == {
        (z, 1, x, 4) for z in good.slices for x in range(5, 9)
    }

    # Deleting the annotation in Label Studio returns the crop to the queue.
    ls_client.delete_annotation(first)
    assert ingest_annotations(looped).withdrawn == 1
    assert crop_state(looped, good.crop_id) == ("queued", None)


def test_push_interrupted_before_the_pool_records_is_recovered(
    environment: None,
    ls_client: LabelStudioClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    labelstudio_project: ProjectMaker,
) -> None:
    project = labelstudio_project(tmp_path / "project", images="upload")
    run_round(project, until="select")

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(push_module.pool_tasks, "queue_crop", crash)
        with pytest.raises(KeyboardInterrupt):
            push_selected(project, latest_round(project))
    with project.session() as session:
        assert pool_tasks.list_tasks(session) == []
    result = push_selected(project, latest_round(project))
    assert (result.pushed, result.recovered) == (2, 2)
    assert len(ls_client.list_task_data(result.project_id)) == 2
    again = push_selected(project, latest_round(project))
    assert again.pushed == 0
    remote = ls_client.list_task_data(result.project_id)
    assert len(remote) == 2
    for task in remote:  # uploaded files this time, served by Label Studio
        urls = [*task["data"]["images"], *task["data"]["overview"]]
        assert all(url.startswith("/data/upload/") for url in urls)
        assert {png_shape(ls_client, url) for url in task["data"]["images"]} == {(32, 32, 3)}
