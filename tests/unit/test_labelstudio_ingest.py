"""Push and ingest pieces that need no server: renumbering, notes, decoding, label files."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from activeseg.cli import app
from activeseg.data.volumes import CropLabels, read_crop_labels, write_crop_labels
from activeseg.errors import AnnotationError, InputError, LabelStudioError
from activeseg.labelstudio.brush import instances_to_results
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.labelstudio.labeling import status_result
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.ingest import (
    SINCE_SETTING,
    annotator_name,
    ingest_annotations,
    ingest_file,
    labels_from_results,
    newest,
)
from activeseg.workflows.project import Project, open_project
from activeseg.workflows.push import (
    PROJECT_SETTING,
    SERVER_SETTING,
    flagged_instances,
    relabel_shown,
    render_pages,
)
from activeseg.workflows.simulate import create_demo_project


def test_relabel_shown_numbers_instances_by_size_and_drops_the_smallest() -> None:
    shown = np.zeros((2, 4, 4), np.uint32)
    shown[0, 0, :] = 70  # 4 voxels
    shown[1, :, :3] = 9  # 12 voxels
    shown[0, 3, 3] = 5  # 1 voxel
    labels, mapping = relabel_shown(shown, max_instances=2)
    assert mapping == {1: 9, 2: 70}
    assert np.array_equal(labels == 1, shown == 9)
    assert np.array_equal(labels == 2, shown == 70)
    assert labels[0, 3, 3] == 0


def test_flagged_instances_names_only_the_shown_ones() -> None:
    risks = [
        {"id": 9, "flags": ["merge"]},
        {"id": 70, "flags": []},
        {"id": 5, "flags": ["split", "unstable"]},
    ]
    notes = flagged_instances(risks, {9: 1, 70: 2})
    assert notes == ["n1: may be merged (several neurons)"]


def test_render_pages_names_one_image_per_page_by_absolute_z() -> None:
    raw = np.random.default_rng(0).integers(0, 500, (3, 6, 8, 10)).astype(np.uint16)
    doubt = np.zeros((6, 8, 10))
    doubt[4, 4:7, 4:8] = 1.0
    images = render_pages(raw, [4, 5, 1], [4], doubt, 1.0, 20, "crop3_r2")
    assert list(images) == ["crop3_r2_z24.png", "crop3_r2_z25.png", "crop3_r2_z21.png"]
    # Where the model is sure the page carries no marks: the same with or without doubts.
    bare = render_pages(raw, [4, 5, 1], [4], None, 1.0, 20, "crop3_r2")
    assert images["crop3_r2_z21.png"] == bare["crop3_r2_z21.png"]
    assert images["crop3_r2_z24.png"] != bare["crop3_r2_z24.png"]


def test_labels_from_results_places_slices_and_masks_the_rest() -> None:
    drawn = np.zeros((2, 5, 6), np.uint32)
    drawn[0, 1:3, 1:4] = 2
    drawn[1, 4, :] = 1
    results = [*instances_to_results(drawn), status_result("done")]
    labels = labels_from_results(results, [3, 7], (9, 5, 6), task=11, allow_empty=False)
    assert np.array_equal(labels.labels[[3, 7]], drawn)
    assert labels.mask.sum(axis=(1, 2)).nonzero()[0].tolist() == [3, 7]
    assert not labels.labels[~labels.mask].any()


def test_labels_from_results_refuses_an_empty_annotation_unless_done() -> None:
    with pytest.raises(AnnotationError, match=r"task 11: .*no brush region"):
        labels_from_results([status_result("unsure")], [0], (2, 3, 3), task=11, allow_empty=False)
    empty = labels_from_results([], [0], (2, 3, 3), task=11, allow_empty=True)
    assert empty.mask[0].all() and not empty.labels.any()


def test_newest_annotation_and_its_author() -> None:
    annotations = [
        {"id": 1, "updated_at": "2026-01-02T10:00:00Z", "completed_by": 3},
        {"id": 2, "updated_at": "2026-01-02T11:00:00.5Z", "completed_by": {"email": "a@b.c"}},
    ]
    assert newest(annotations) == annotations[1]
    assert newest([]) is None
    assert annotator_name(annotations[0]) == "user 3"
    assert annotator_name(annotations[1]) == "a@b.c"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo_project(tmp_path_factory.mktemp("ingest") / "project", "smoke").root


def first_pool_crop(project: Project) -> tuple[int, tuple[int, int, int]]:
    with project.session() as session:
        crop = pool_volumes.list_crops(session, split="pool")[0]
    return crop.id, crop.shape


def test_ingest_file_records_labels_made_elsewhere(synthetic: Path, tmp_path: Path) -> None:
    project = open_project(synthetic)
    crop_id, shape = first_pool_crop(project)
    labels = np.zeros(shape, np.uint32)
    labels[2:5, 3:9, 4:6] = 7
    mask = np.zeros(shape, bool)
    mask[2:5] = True
    source = tmp_path / "napari.zarr"
    write_crop_labels(source, CropLabels(labels, mask, np.zeros((0, 4), np.int64)))

    assert ingest_file(project, crop_id, source, round_number=3) == "ingested"
    with project.session() as session:
        crop = pool_volumes.get_crop(session, crop_id)
        (task,) = [t for t in pool_tasks.list_tasks(session) if t.crop_id == crop_id]
    assert (crop.status, crop.labeled_round) == ("labeled", 3)
    assert task.slices == (2, 3, 4)
    stored = read_crop_labels(project.resolve(str(crop.label_path)))
    assert np.array_equal(stored.labels, labels) and np.array_equal(stored.mask, mask)

    plain = tmp_path / "plain.zarr"
    zarr.create_array(plain, data=labels * 2)
    assert ingest_file(project, crop_id, plain) == "updated"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (np.zeros((3, 4, 4), np.uint32), "labels of shape"),
        (None, "integer"),
    ],
)
def test_ingest_file_rejects_bad_labels_and_stores_nothing(
    synthetic: Path, tmp_path: Path, data: np.ndarray | None, message: str
) -> None:
    project = open_project(synthetic)
    with project.session() as session:
        crop = pool_volumes.list_crops(session, split="pool")[1]
    bad = tmp_path / "bad.zarr"
    zarr.create_array(bad, data=np.zeros(crop.shape, np.float32) if data is None else data)
    before = sorted(project.labels_dir.rglob("*")) if project.labels_dir.exists() else []
    answer = CliRunner().invoke(
        app, ["ingest", "--from-file", str(crop.id), str(bad), "-p", str(synthetic)]
    )
    assert answer.exit_code == 2
    assert message in answer.stderr and "bad.zarr" in answer.stderr
    after = sorted(project.labels_dir.rglob("*")) if project.labels_dir.exists() else []
    assert after == before
    with project.session() as session:
        assert pool_volumes.get_crop(session, crop.id).status == "unlabeled"
    with pytest.raises(InputError):
        ingest_file(project, crop.id, tmp_path / "missing.zarr")


class ChangedTasks:
    """A stand-in client that lists fixed changed tasks; ``present``: the task ids the server
    still has (None: the project was deleted)."""

    def __init__(self, tasks: list[dict[str, Any]], present: set[int] | None = None) -> None:
        self.tasks = tasks
        self.present: set[int] | None = set(range(1000)) if present is None else present

    def changed_tasks(self, project_id: int, since: Any = None) -> list[dict[str, Any]]:
        return self.tasks

    def task_ids(self, project_id: int) -> set[int] | None:
        return self.present

    def close(self) -> None:
        pass


def test_ids_from_the_server_are_checked_before_use_in_paths(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("ids") / "project", "smoke")
    crop_id, shape = first_pool_crop(project)
    with project.session() as session:
        pool_settings.set_setting(session, PROJECT_SETTING, "1")
        pool_tasks.queue_crop(
            session, crop_id, round_id=None, slices=[0], pushed={"shape": shape}, ls_task_id=50
        )
    plane = np.zeros((1, *shape[1:]), np.uint32)
    plane[0, :2, :2] = 1
    escape = "../../../../escaped"
    annotation = {
        "id": escape,
        "updated_at": "2026-01-02T03:04:05Z",
        "result": instances_to_results(plane),
        "was_cancelled": False,
    }
    client = ChangedTasks(
        [
            {"id": "7; rm -rf", "updated_at": "2026-01-02T03:04:05Z", "annotations": []},
            {"id": 50, "updated_at": "2026-01-02T03:04:06Z", "annotations": [annotation]},
        ]
    )
    result = ingest_annotations(project, client=cast(LabelStudioClient, client))
    assert result.ingested == 0
    assert [error.split(":")[0] for error in result.errors] == [
        "a task from Label Studio",
        "task 50",
    ]
    assert "'7; rm -rf'" in result.errors[0] and "not a non-negative integer" in result.errors[1]
    assert not list(project.root.parent.rglob("escaped*"))
    with project.session() as session:
        assert pool_volumes.get_crop(session, crop_id).status == "queued"


def test_two_neurons_painted_on_one_voxel_are_both_kept() -> None:
    shown = np.zeros((2, 6, 6), np.uint32)
    shown[1, 1:4, 1:4] = 3
    other = np.zeros((2, 6, 6), np.uint32)
    other[1, 2:5, 2:5] = 2  # shares a 2x2 patch with neuron 3 on the second shown slice
    results = instances_to_results(shown) + instances_to_results(other)
    labels = labels_from_results(results, [4, 9], (12, 6, 6), task=1, allow_empty=False)
    instances = labels.instances()
    for ident, plane in ((3, shown[1]), (2, other[1])):
        assert np.array_equal(instances.mask(ident)[9], plane > 0)
    assert labels.labels[9, 2, 2] == 2  # the smaller id in the image, the other as a row
    assert sorted(map(tuple, labels.overlaps.tolist())) == [
        (9, y, x, 3) for y in (2, 3) for x in (2, 3)
    ]
    assert not instances.overlap_mask()[4].any()


def _label_group(path: Path, shape: tuple[int, ...], **arrays: np.ndarray) -> Path:
    group = zarr.open_group(path, mode="w")
    labels = np.zeros(shape, np.uint32)
    labels[0, :2, :2] = 1
    defaults = {
        "labels": labels,
        "mask": np.ones(shape, bool),
        "overlaps": np.zeros((0, 4), np.int64),
    }
    for key, value in {**defaults, **arrays}.items():
        group.create_array(key, data=value)
    return path


def test_ingest_file_keeps_overlaps_given_in_the_file(synthetic: Path, tmp_path: Path) -> None:
    project = open_project(synthetic)
    crop_id, shape = first_pool_crop(project)
    rows = np.array([[0, 1, 1, 5], [0, 0, 1, 5]], np.int64)
    source = _label_group(tmp_path / "overlaps.zarr", shape, overlaps=rows)
    assert ingest_file(project, crop_id, source) in ("ingested", "updated")
    with project.session() as session:
        crop = pool_volumes.get_crop(session, crop_id)
    stored = read_crop_labels(project.resolve(str(crop.label_path)))
    assert np.array_equal(stored.overlaps, rows)
    assert stored.instances().mask(5)[0, 1, 1] and stored.instances().mask(1)[0, 1, 1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"labels": -5}, "0..4294967295"),
        ({"labels": np.nan}, "integer"),
        ({"labels": 2**32 + 1}, "0..4294967295"),
        ({"overlaps": np.array([[0, 99, 0, 2]])}, "outside the crop"),
        ({"overlaps": np.array([[0, 0, 0, 0]])}, "names no neuron"),
        ({"mask": 7}, "boolean"),
    ],
    ids=["negative id", "nan", "id over 2^32", "overlap out of bounds", "overlap id 0", "mask 7"],
)
def test_ingest_file_refuses_values_that_would_change_when_stored(
    synthetic: Path, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    project = open_project(synthetic)
    crop_id, shape = first_pool_crop(project)
    key, value = next(iter(change.items()))
    if key == "overlaps":
        arrays = {key: np.asarray(value, np.int64)}
    else:
        dtype = {"labels": np.float64 if value is np.nan else np.int64, "mask": np.int8}[key]
        array = np.zeros(shape, dtype)
        array[0, 0, 0] = value  # type: ignore[index]
        arrays = {key: array}
    source = _label_group(tmp_path / "bad.zarr", shape, **arrays)
    before = sorted(project.labels_dir.rglob("*")) if project.labels_dir.exists() else []
    with pytest.raises(InputError, match=message):
        ingest_file(project, crop_id, source)
    after = sorted(project.labels_dir.rglob("*")) if project.labels_dir.exists() else []
    assert after == before


class RecordingTasks(ChangedTasks):
    """A stand-in client that also records the ``since`` it was asked for."""

    def __init__(self, tasks: list[dict[str, Any]]) -> None:
        super().__init__(tasks)
        self.asked: list[Any] = []

    def changed_tasks(self, project_id: int, since: Any = None) -> list[dict[str, Any]]:
        self.asked.append(since)
        return self.tasks


def _queued_tasks(project: Project, n: int) -> list[tuple[int, tuple[int, int, int]]]:
    with project.session() as session:
        pool_settings.set_setting(session, PROJECT_SETTING, "1")
        crops = pool_volumes.list_crops(session, split="pool")[:n]
        for k, crop in enumerate(crops):
            pool_tasks.queue_crop(
                session,
                crop.id,
                round_id=None,
                slices=[0],
                pushed={},
                ls_project_id=1,
                ls_task_id=100 + k,
            )
    return [(c.id, c.shape) for c in crops]


def _answer(shape: tuple[int, ...], ident: int, when: str, **changes: Any) -> dict[str, Any]:
    plane = np.zeros((1, *shape[1:]), np.uint32)
    plane[0, :2, :2] = 1
    return {
        "id": ident,
        "updated_at": when,
        "result": instances_to_results(plane),
        "was_cancelled": False,
        **changes,
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"result": [{"from_name": "tag", "type": "brushlabels", "value": {"brushlabels": ["n²"]}}]},
        {
            "result": [
                {
                    "from_name": "tag",
                    "type": "brushlabels",
                    "value": {"brushlabels": ["n99999999999"]},
                }
            ]
        },
        {"result": {"from_name": "tag"}},
        {"updated_at": "yesterday"},
        {"updated_at": None},
        {"id": None},
    ],
    ids=["n²", "huge id", "result as dict", "bad updated_at", "no updated_at", "no id"],
)
def test_a_malformed_annotation_fails_its_task_only_and_is_reported_until_fixed(
    tmp_path_factory: pytest.TempPathFactory, bad: dict[str, Any]
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("bad") / "project", "smoke")
    (first, shape), (second, _) = _queued_tasks(project, 2)
    broken = _answer(shape, 1, "2026-01-02T03:00:00Z", **bad)
    good = _answer(shape, 2, "2026-01-02T04:00:00Z")
    client = RecordingTasks(
        [
            {"id": 100, "updated_at": "2026-01-02T03:00:00Z", "annotations": [broken]},
            {"id": 101, "updated_at": "2026-01-02T04:00:00Z", "annotations": [good]},
        ]
    )
    for _ in range(2):  # reported again on the next ingest: the cursor waits for it
        result = ingest_annotations(project, client=cast(LabelStudioClient, client))
        assert len(result.errors) == 1 and result.errors[0].startswith("task 100")
    assert (result.ingested, result.unchanged) == (0, 1)
    assert client.asked[1] < datetime(2026, 1, 2, 3, tzinfo=UTC)
    with project.session() as session:
        assert pool_volumes.get_crop(session, first).status == "queued"
        assert pool_volumes.get_crop(session, second).status == "labeled"


def test_the_cursor_rereads_a_window_so_late_commits_are_not_skipped(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("late") / "project", "smoke")
    (_, shape), (late, _) = _queued_tasks(project, 2)
    client = RecordingTasks(
        [
            {
                "id": 100,
                "updated_at": "2026-01-02T04:00:00Z",
                "annotations": [_answer(shape, 1, "2026-01-02T04:00:00Z")],
            }
        ]
    )
    assert ingest_annotations(project, client=cast(LabelStudioClient, client)).ingested == 1
    # a task stamped a second before the cursor, committed after the first listing
    client.tasks = [
        *client.tasks,
        {
            "id": 101,
            "updated_at": "2026-01-02T03:59:59Z",
            "annotations": [_answer(shape, 2, "2026-01-02T03:59:59Z")],
        },
    ]
    again = ingest_annotations(project, client=cast(LabelStudioClient, client))
    assert (again.ingested, again.unchanged) == (1, 1)
    assert client.asked[1] <= datetime(2026, 1, 2, 3, 59, 59, tzinfo=UTC)
    with project.session() as session:
        assert pool_volumes.get_crop(session, late).status == "labeled"


def test_an_empty_labelstudio_task_does_not_withdraw_labels_from_a_file(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("keep") / "project", "smoke")
    ((crop_id, shape),) = _queued_tasks(project, 1)
    source = _label_group(tmp_path / "napari.zarr", shape)
    assert ingest_file(project, crop_id, source) == "ingested"
    client = ChangedTasks([{"id": 100, "updated_at": "2026-01-02T04:00:00Z", "annotations": []}])
    result = ingest_annotations(project, client=cast(LabelStudioClient, client))
    assert (result.withdrawn, result.unchanged) == (0, 1)
    with project.session() as session:
        assert pool_volumes.get_crop(session, crop_id).status == "labeled"


def test_unsure_labels_are_recorded_and_kept_out_of_training(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from activeseg.workflows.fit import training_crops

    project = create_demo_project(tmp_path_factory.mktemp("unsure") / "project", "smoke")
    (sure, shape), (doubtful, _) = _queued_tasks(project, 2)
    unsure = _answer(shape, 2, "2026-01-02T04:00:00Z")
    unsure["result"] = [*unsure["result"], status_result("unsure")]
    client = ChangedTasks(
        [
            {"id": 100, "updated_at": "2026-01-02T04:00:00Z",
             "annotations": [_answer(shape, 1, "2026-01-02T04:00:00Z")]},
            {"id": 101, "updated_at": "2026-01-02T04:00:00Z", "annotations": [unsure]},
        ]
    )  # fmt: skip
    assert ingest_annotations(project, client=cast(LabelStudioClient, client)).ingested == 2
    with project.session() as session:
        assert pool_tasks.unsure_crop_ids(session) == {doubtful}
    assert [c.name for c in training_crops(project)] == [f"crop {sure}"]
    included = replace(project, config=project.config.model_copy(update={
        "train": project.config.train.model_copy(update={"unsure": "include"})}))  # fmt: skip
    assert sorted(c.name for c in training_crops(included)) == sorted(
        [f"crop {sure}", f"crop {doubtful}"]
    )


def test_another_server_is_refused_before_its_task_ids_are_used(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("server") / "project", "smoke")
    _queued_tasks(project, 1)
    with project.session() as session:
        pool_settings.set_setting(session, SERVER_SETTING, "http://127.0.0.1:8080")
    other = ChangedTasks([{"id": 100, "updated_at": "2026-01-02T04:00:00Z", "annotations": []}])
    other.shown_url = "http://127.0.0.1:9090"  # type: ignore[attr-defined]
    with pytest.raises(LabelStudioError, match=r"points to http://127\.0\.0\.1:9090"):
        ingest_annotations(project, client=cast(LabelStudioClient, other))
    with project.session() as session:
        assert pool_settings.get_setting(session, SINCE_SETTING) is None


def test_an_untouched_pre_annotation_is_marked_as_such(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("untouched") / "project", "smoke")
    (as_drawn, shape), (corrected, _) = _queued_tasks(project, 2)
    model = _answer(shape, 1, "2026-01-02T04:00:00Z")["result"]
    client = ChangedTasks(
        [
            {"id": 100, "updated_at": "2026-01-02T04:00:00Z", "predictions": [{"result": model}],
             "annotations": [_answer(shape, 1, "2026-01-02T04:00:00Z")]},
            {"id": 101, "updated_at": "2026-01-02T04:00:00Z", "predictions": [{"result": model}],
             "annotations": [_answer(shape, 2, "2026-01-02T04:00:00Z")]},
        ]
    )  # fmt: skip
    client.tasks[1]["annotations"][0]["result"][0]["value"]["brushlabels"] = ["n2"]
    assert ingest_annotations(project, client=cast(LabelStudioClient, client)).ingested == 2
    with project.session() as session:
        statuses = {
            t.crop_id: pool_tasks.current_annotation(session, t.id).status  # type: ignore[union-attr]
            for t in pool_tasks.list_tasks(session)
        }
    assert statuses[as_drawn] == "untouched" and statuses[corrected] is None
    with project.session() as session:  # what each cost, in the annotator's units
        costs = [cost for _, cost in pool_tasks.labeled_costs(session)]
        shown = [len(t.slices) for t in pool_tasks.list_tasks(session)]
    assert [(c.added, c.removed, c.split, c.merged) for c in costs] == [(1, 0, 0, 0)] * 2
    assert [c.slices for c in costs] == shown and all(c.repainted > 0 for c in costs)


def test_tasks_deleted_in_labelstudio_return_their_crops_to_the_pool(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("deleted") / "project", "smoke")
    (kept, shape), (labeled, _), (gone, _) = _queued_tasks(project, 3)
    answered = {"id": 101, "updated_at": "2026-01-02T04:00:00Z",
                "annotations": [_answer(shape, 1, "2026-01-02T04:00:00Z")]}  # fmt: skip
    client = ChangedTasks([answered])
    assert ingest_annotations(project, client=cast(LabelStudioClient, client)).ingested == 1
    client.present = {100}  # tasks 101 (answered) and 102 (not) deleted in Label Studio
    result = ingest_annotations(project, client=cast(LabelStudioClient, client))
    assert result.deleted == 2
    with project.session() as session:
        status = {c: pool_volumes.get_crop(session, c).status for c in (kept, labeled, gone)}
        active = {t.ls_task_id for t in pool_tasks.list_tasks(session, active=True)}
    # the ingested labels stay; the unanswered crop can be selected and pushed again
    assert status == {kept: "queued", labeled: "labeled", gone: "unlabeled"}
    assert active == {100}
    assert ingest_annotations(project, client=cast(LabelStudioClient, client)).deleted == 0


def test_a_project_deleted_in_labelstudio_releases_its_crops_and_the_next_push_starts_anew(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    project = create_demo_project(tmp_path_factory.mktemp("gone") / "project", "smoke")
    crops = [c for c, _ in _queued_tasks(project, 2)]
    with project.session() as session:
        pool_settings.set_setting(session, SINCE_SETTING, "2026-01-02T04:00:00+00:00")
    client = ChangedTasks([])
    client.present = None  # the Label Studio project was deleted
    result = ingest_annotations(project, client=cast(LabelStudioClient, client))
    assert result.deleted == 2 and result.errors == []
    with project.session() as session:
        assert {pool_volumes.get_crop(session, c).status for c in crops} == {"unlabeled"}
        assert pool_settings.get_setting(session, PROJECT_SETTING) is None
        assert pool_settings.get_setting(session, SINCE_SETTING) is None
