"""Review tasks: stored labels (overlaps included) pushed again, and the answer ingested."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.data.volumes import CropLabels, read_crop_labels
from activeseg.errors import InputError
from activeseg.labelstudio.brush import instances_to_results, results_to_instances
from activeseg.labelstudio.client import API_KEY_ENV, URL_ENV, LabelStudioClient
from activeseg.labelstudio.labeling import status_result
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo
from activeseg.workflows.check import check_project
from activeseg.workflows.fit import training_crops
from activeseg.workflows.ingest import ingest_annotations
from activeseg.workflows.project import DATABASE_FILE, Project
from activeseg.workflows.push import PROJECT_SETTING, latest_round, push_reviews, stored_on_slices
from activeseg.workflows.simulate import create_demo_project

Json = dict[str, Any]
SLICES = [1, 3]
FIRST_TASK = 100


class FakeLabelStudio:
    """A stand-in server: tasks imported are kept, answered by hand, and listed as changed."""

    shown_url = "http://labelstudio.test"

    def __init__(self) -> None:
        self.tasks: dict[int, Json] = {}

    def add(self, data: Json, predictions: list[Json] | None = None) -> int:
        ident = FIRST_TASK + len(self.tasks)
        self.tasks[ident] = {"id": ident, "data": data, "predictions": predictions or [],
                             "annotations": [], "updated_at": "2026-01-01T00:00:00Z"}  # fmt: skip
        return ident

    def answer(self, ident: int, annotation: Json) -> None:
        task = self.tasks[ident]
        task["annotations"] = [a for a in task["annotations"] if a["id"] != annotation["id"]]
        task["annotations"].append(annotation)
        task["updated_at"] = annotation["updated_at"]

    def check(self) -> None:
        pass

    def ensure_project(self, title: str, config: str, project_id: int | None = None) -> int:
        return project_id or 1

    def ensure_default_view(self, project_id: int, hidden: Any) -> int:
        return 1

    def task_ids(self, project_id: int) -> set[int]:
        return set(self.tasks)

    def list_task_data(self, project_id: int) -> list[Json]:
        return [{"id": t["id"], "data": t["data"]} for t in self.tasks.values()]

    def import_tasks(self, project_id: int, tasks: list[Json]) -> list[int]:
        return [self.add(t["data"], t.get("predictions")) for t in tasks]

    def changed_tasks(self, project_id: int, since: Any = None) -> list[Json]:
        return list(self.tasks.values())

    def close(self) -> None:
        pass


def _annotation(ident: int, when: str, results: list[Json], status: str) -> Json:
    return {"id": ident, "updated_at": when, "was_cancelled": False,
            "result": [*results, status_result(status)]}  # fmt: skip


def _drawn(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Return labels on the two label slices and overlap rows (slice, y, x, id): neuron 2
    crosses neuron 1, so four voxels of each slice are in both."""
    labels = np.zeros((len(SLICES), *shape[1:]), np.uint32)
    labels[:, 2:4, :] = 1
    labels[:, 8:20, 5:7] = 2
    crossing = np.array([(i, y, x, 2) for i in range(len(SLICES)) for y in (2, 3) for x in (5, 6)])
    return labels, crossing


@pytest.fixture
def unsure(tmp_path: Path) -> tuple[Project, CropInfo, FakeLabelStudio]:
    """Return a project whose first pool crop holds an unsure annotation with overlaps,
    ingested from the stand-in server, the crop, and that server."""
    project = create_demo_project(tmp_path / "project", "smoke")
    server = FakeLabelStudio()
    with project.session() as session:
        pool_settings.set_setting(session, PROJECT_SETTING, "1")
        round_id = pool_rounds.start_round(session, strategy="random", batch_size=2, config="").id
        crop = pool_volumes.list_crops(session, split="pool")[0]
        ident = server.add({"crop_id": crop.id, "round": 0})
        pool_tasks.queue_crop(session, crop.id, round_id=round_id, slices=SLICES,
                              pushed={"shape": list(crop.shape)}, ls_project_id=1,
                              ls_task_id=ident)  # fmt: skip
    labels, crossing = _drawn(crop.shape)
    regions = instances_to_results(labels, overlaps=crossing)
    server.answer(ident, _annotation(1, "2026-01-02T03:00:00Z", regions, "unsure"))
    assert ingest_annotations(project, client=cast(LabelStudioClient, server)).ingested == 1
    with project.session() as session:
        assert pool_tasks.unsure_crop_ids(session) == {crop.id}
        return project, pool_volumes.get_crop(session, crop.id), server


def _push(project: Project, server: FakeLabelStudio, crops: tuple[int, ...] = ()) -> Any:
    return push_reviews(project, latest_round(project), crop_ids=crops,
                        client=cast(LabelStudioClient, server))  # fmt: skip


def test_a_review_task_pre_annotates_the_stored_labels_with_their_overlaps(
    unsure: tuple[Project, CropInfo, FakeLabelStudio],
) -> None:
    project, crop, server = unsure
    result = _push(project, server)
    assert result.pushed == 1
    remote = server.tasks[result.tasks[0]]
    assert remote["data"]["review"] is True and remote["data"]["crop_id"] == crop.id
    assert remote["data"]["caption"].startswith(
        f"Review of crop {crop.id}, labelled in round 0 and marked unsure; voxels in two "
        "neurons are painted in both."
    )
    (prediction,) = remote["predictions"]
    assert prediction["model_version"] == "stored labels"
    stored = read_crop_labels(project.resolve(str(crop.label_path)))
    with project.session() as session:
        (review,) = pool_tasks.list_tasks(session, active=True)
    pages = review.pushed["pages"]
    assert list(review.slices) == SLICES and review.pushed["review"]["round"] == 0
    shown, _ = results_to_instances(prediction["result"], len(pages), *crop.shape[1:])
    on_labels = [pages.index(z) for z in SLICES]
    assert np.array_equal(shown.labels[on_labels], stored.labels[SLICES])
    decoded = {(pages[z], y, x, k) for z, y, x, k in shown.overlaps.tolist()}
    assert decoded == {tuple(row) for row in stored.overlaps.tolist()} and len(decoded) == 8
    # Two regions of one page share the crossing voxels.
    page = [r for r in prediction["result"] if r["item_index"] == on_labels[0]]
    assert sorted(r["value"]["brushlabels"][0] for r in page) == ["n1", "n2"]


def test_a_crop_with_an_open_review_task_is_not_pushed_twice(
    unsure: tuple[Project, CropInfo, FakeLabelStudio],
) -> None:
    project, crop, server = unsure
    assert _push(project, server).pushed == 1
    assert _push(project, server).pushed == 0
    assert _push(project, server, (crop.id,)).pushed == 0
    assert [t["data"].get("review", False) for t in server.tasks.values()] == [False, True]
    with project.session() as session:
        tasks = pool_tasks.list_tasks(session)
        assert pool_volumes.get_crop(session, crop.id).status == "labeled"
    assert [t.active for t in tasks] == [False, True]


def test_a_crop_named_for_review_that_is_not_labeled_is_refused_and_nothing_changes(
    unsure: tuple[Project, CropInfo, FakeLabelStudio], monkeypatch: pytest.MonkeyPatch
) -> None:
    project, crop, _ = unsure
    with project.session() as session:
        other = pool_volumes.list_crops(session, status="unlabeled")[0].id
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")  # nothing listens: never contacted
    monkeypatch.setenv(API_KEY_ENV, "x" * 40)
    ledger = project.root / DATABASE_FILE
    before = ledger.read_bytes()
    args = ["push", "--review", "--crop", str(crop.id), "--crop", str(other)]
    answer = CliRunner().invoke(app, [*args, "-p", str(project.root)])
    assert answer.exit_code == 2, answer.output
    assert f"crop {other}" in answer.stderr and "unlabeled" in answer.stderr
    assert ledger.read_bytes() == before


def test_an_answered_review_replaces_the_labels_and_the_crop_trains_again(
    unsure: tuple[Project, CropInfo, FakeLabelStudio], caplog: pytest.LogCaptureFixture
) -> None:
    project, crop, server = unsure
    (ident,) = _push(project, server).tasks
    client = cast(LabelStudioClient, server)
    prediction = server.tasks[ident]["predictions"][0]["result"]
    server.answer(ident, _annotation(7, "2026-01-03T03:00:00Z", prediction, "done"))
    with caplog.at_level(logging.WARNING):  # the replaced task, read again, is no news
        assert ingest_annotations(project, client=client).ingested == 1
    assert "replaced" not in caplog.text
    with project.session() as session:
        crop_now = pool_volumes.get_crop(session, crop.id)
        old, review = pool_tasks.list_tasks(session)
        history = [*pool_tasks.annotation_history(session, old.id),
                   *pool_tasks.annotation_history(session, review.id)]  # fmt: skip
        assert pool_tasks.unsure_crop_ids(session) == set()
    assert [(a.current, a.status) for a in history] == [(False, "unsure"), (True, "untouched")]
    assert (crop_now.status, crop_now.labeled_round) == ("labeled", 0)
    assert crop_now.label_path == history[1].label_path != crop.label_path
    stored = read_crop_labels(project.resolve(str(crop_now.label_path)))
    before = read_crop_labels(project.resolve(str(crop.label_path)))
    assert np.array_equal(stored.overlaps, before.overlaps) and len(stored.overlaps) == 8
    assert [c.name for c in training_crops(project)] == [f"crop {crop.id}"]
    assert check_project(project).consistent
    with project.session() as session:  # measured against the stored labels it showed
        ((_, cost),) = pool_tasks.labeled_costs(session)
    assert (cost.slices, cost.repainted, cost.added, cost.removed) == (2, 0, 0, 0)

    # An edit of the replaced task is not ingested over the review, and fails nothing.
    server.answer(old.ls_task_id or 0, _annotation(1, "2026-01-04T00:00:00Z", [], "done"))
    with caplog.at_level(logging.WARNING):
        again = ingest_annotations(project, client=client)
    assert (again.errors, again.ingested, again.updated) == ([], 0, 0)
    assert f"replaced by the review task {ident}" in caplog.text

    # The reviewer deletes the answer: the labels reviewed are in force again, as they were.
    server.tasks[ident]["annotations"] = []
    assert ingest_annotations(project, client=client).withdrawn == 1
    with project.session() as session:
        restored = pool_volumes.get_crop(session, crop.id)
        assert pool_tasks.unsure_crop_ids(session) == {crop.id}
    assert (restored.status, restored.label_path, restored.labeled_round) == (
        "labeled",
        crop.label_path,
        0,
    )
    assert _push(project, server).pushed == 0  # its review task is still open
    assert check_project(project).consistent


def test_a_skipped_review_leaves_the_reviewed_labels_in_force(
    unsure: tuple[Project, CropInfo, FakeLabelStudio],
) -> None:
    project, crop, server = unsure
    (ident,) = _push(project, server).tasks
    skip = {"id": 8, "updated_at": "2026-01-03T03:00:00Z", "was_cancelled": True, "result": []}
    server.answer(ident, skip)
    assert ingest_annotations(project, client=cast(LabelStudioClient, server)).skipped == 1
    with project.session() as session:
        after = pool_volumes.get_crop(session, crop.id)
        assert pool_tasks.unsure_crop_ids(session) == {crop.id}
    assert (after.status, after.label_path) == ("labeled", crop.label_path)
    assert check_project(project).consistent

    # The review task is deleted in Label Studio, then the replaced one edited: neither fails.
    del server.tasks[ident]
    server.answer(FIRST_TASK, _annotation(1, "2026-01-05T00:00:00Z", [], "done"))
    result = ingest_annotations(project, client=cast(LabelStudioClient, server))
    assert (result.deleted, result.errors, result.ingested) == (1, [], 0)
    with project.session() as session:
        assert pool_volumes.get_crop(session, crop.id).label_path == crop.label_path
        assert pool_tasks.list_tasks(session, active=True) == []
    assert check_project(project).consistent


def test_stored_ids_beyond_the_brush_labels_are_renumbered_with_their_overlaps() -> None:
    labels = np.zeros((4, 6, 6), np.uint32)
    labels[1, 0, :] = 900
    labels[3, 2, :] = 70
    overlaps = np.array([(1, 0, 2, 70), (2, 5, 5, 900)])  # the second is off the label slices
    mask = np.zeros(labels.shape, bool)
    mask[[1, 3]] = True
    shown, rows = stored_on_slices(CropLabels(labels, mask, overlaps), [1, 3], 4)
    assert np.array_equal(shown[0, 0], [2] * 6) and np.array_equal(shown[1, 2], [1] * 6)
    assert rows.tolist() == [[0, 0, 2, 1]]
    with pytest.raises(InputError, match=r"crop 5: 2 neurons .*max_instances is 1"):
        stored_on_slices(CropLabels(labels, mask, overlaps), [1, 3], 1, "crop 5")
