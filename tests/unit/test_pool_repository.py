"""Repository functions of the pool, on a real migrated SQLite file and PostgreSQL server."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activeseg.errors import InputError, StateError
from activeseg.pool import rounds, settings, tasks, volumes
from activeseg.pool.records import CachedScore
from activeseg.workflows.project import Project

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _volume_with_crops(session: Session, n: int = 3) -> list[int]:
    volume = volumes.add_volume(
        session,
        name="v",
        path="volumes/v.zarr",
        split="pool",
        channels=3,
        shape=(8, 32, 32 * n),
        voxel_size=(1.0, 0.5, 0.5),
        has_ground_truth=True,
        source="t",
    )
    boxes = [((0, 0, 32 * k), (8, 32, 32 * (k + 1)), 0.1) for k in range(n)]
    return [c.id for c in volumes.add_crops(session, volume.id, boxes)]


def test_volumes_and_crop_counts(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        crop_ids = _volume_with_crops(session)
        with pytest.raises(InputError, match="already registered"):
            _volume_with_crops(session)
    with ledger_project.session() as session:
        counts = volumes.crop_counts(session)
        assert counts == {"pool": {"unlabeled": 3, "queued": 0, "labeled": 0, "skipped": 0}}
        crop = volumes.get_crop(session, crop_ids[1])
        assert crop.shape == (8, 32, 32)
        assert crop.box == (slice(0, 8), slice(0, 32), slice(32, 64))
        assert volumes.get_volume(session, "v").voxel_size == (1.0, 0.5, 0.5)


def test_a_failed_transaction_leaves_nothing(ledger_project: Project) -> None:
    with pytest.raises(RuntimeError), ledger_project.session() as session:
        _volume_with_crops(session)
        raise RuntimeError("crash half-way")
    with ledger_project.session() as session:
        assert volumes.list_volumes(session) == []
        assert volumes.crop_counts(session) == {}


def test_rounds_and_resumable_stages(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        first = rounds.start_round(session, strategy="random", batch_size=2, config="x: 1")
        assert first.number == 0
        rounds.begin_stage(session, first.id, "train")
        rounds.end_stage(session, first.id, "train", error="killed")
        rounds.begin_stage(session, first.id, "train")
        rounds.end_stage(session, first.id, "train", outputs={"steps": 5})
        assert rounds.open_round(session) is not None
        rounds.finish_round(session, first.id)
        second = rounds.start_round(session, strategy="bald", batch_size=2, config="x: 1")
    with ledger_project.session() as session:
        history = rounds.list_rounds(session)
        assert [r.number for r in history] == [0, 1]
        train = history[0].stage("train")
        assert train is not None and train.status == "done" and train.outputs == {"steps": 5}
        assert train.error is None
        open_round = rounds.open_round(session)
        assert open_round is not None and open_round.id == second.id


def test_scores_are_unique_per_round_and_ranked(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        crops = _volume_with_crops(session)
        r = rounds.start_round(session, strategy="bald", batch_size=1, config="")
        rounds.save_scores(session, r.id, [(c, float(c), {"bald": float(c)}) for c in crops])
        rounds.save_scores(session, r.id, [(c, float(c), {"bald": float(c)}) for c in crops])
        rounds.record_selection(session, r.id, crops[::-1], 1)
        scores = rounds.round_scores(session, r.id)
    assert [s.crop_id for s in scores] == crops[::-1]
    assert [s.selected for s in scores] == [True, False, False]


def test_scores_are_added_in_batches_and_stale_ones_dropped(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        crops = _volume_with_crops(session, 4)
        r = rounds.start_round(session, strategy="bald", batch_size=1, config="")
        rounds.add_scores(session, r.id, [(c, 1.0, {}) for c in crops[:2]])
    with ledger_project.session() as session:
        rounds.add_scores(session, r.id, [(crops[2], 2.0, {})])
        assert rounds.scored_crop_ids(session, r.id) == set(crops[:3])
        assert rounds.keep_scores(session, r.id, set(crops[1:])) == 1
        assert rounds.scored_crop_ids(session, r.id) == set(crops[1:3])
    with pytest.raises(IntegrityError), ledger_project.session() as session:
        rounds.add_scores(session, r.id, [(crops[1], 3.0, {})])


def test_the_score_cache_is_per_crop_and_model(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        crops = _volume_with_crops(session)
        rounds.cache_scores(
            session,
            [CachedScore(c, "a", {"bald": 1.0}, f"p/{c}.zarr") for c in crops]
            + [CachedScore(crops[0], "b", {"bald": 2.0}, None)],
        )
    with ledger_project.session() as session:
        rounds.cache_scores(session, [CachedScore(crops[1], "a", {"bald": 5.0}, "q.zarr")])
        cached = rounds.cached_scores(session, "a")
        assert set(cached) == set(crops)
        assert cached[crops[1]] == CachedScore(crops[1], "a", {"bald": 5.0}, "q.zarr")
        assert rounds.cached_scores(session, "b")[crops[0]].parts == {"bald": 2.0}
        assert rounds.cached_scores(session, "c") == {}
        assert rounds.prune_score_cache(session, "a") == 1
        assert rounds.cached_scores(session, "b") == {}
        assert len(rounds.cached_scores(session, "a")) == 3


def test_one_active_task_per_crop(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        crop = _volume_with_crops(session, 1)[0]
        tasks.queue_crop(session, crop, round_id=None, slices=[1, 5], pushed={})
        with pytest.raises(StateError, match="queued"):
            tasks.queue_crop(session, crop, round_id=None, slices=[1, 5], pushed={})
    with pytest.raises(IntegrityError), ledger_project.session() as session:
        # Bypass the repository: the database itself refuses a second active task.
        from activeseg.pool.models import Task

        session.add(Task(crop_id=crop, slices=[0], pushed={}, active=True))
        session.flush()


def test_a_task_id_the_server_reuses_after_a_deletion_maps_to_the_new_task(
    smoke_project: Project,
) -> None:
    with smoke_project.session() as session:
        old_crop, new_crop = _volume_with_crops(session, 2)
        old = tasks.queue_crop(session, old_crop, round_id=None, slices=[1], pushed={},
                               ls_project_id=1, ls_task_id=7)  # fmt: skip
        with pytest.raises(IntegrityError), session.begin_nested():
            tasks.queue_crop(session, new_crop, round_id=None, slices=[1], pushed={},
                             ls_project_id=1, ls_task_id=7)  # fmt: skip
        tasks.retire_tasks(session, [old.id])  # deleted in Label Studio
        new = tasks.queue_crop(session, new_crop, round_id=None, slices=[1], pushed={},
                               ls_project_id=2, ls_task_id=7)  # fmt: skip
        found = tasks.task_by_ls_id(session, 7)
        assert found is not None and found.id == new.id
        assert volumes.get_crop(session, old_crop).status == "unlabeled"


def test_annotations_are_idempotent_and_superseded_versions_are_kept(
    ledger_project: Project,
) -> None:
    with ledger_project.session() as session:
        crop = _volume_with_crops(session, 1)[0]
        task = tasks.queue_crop(session, crop, round_id=None, slices=[0], pushed={})
        kwargs = dict(
            ls_annotation_id=7,
            annotator="a@lab",
            lead_time=3.0,
            was_cancelled=False,
            round_number=1,
        )
        _, changed = tasks.record_annotation(
            session, task.id, updated_at=T0, label_path="labels/a.zarr", **kwargs
        )
        assert changed
        _, changed = tasks.record_annotation(
            session, task.id, updated_at=T0, label_path="labels/a.zarr", **kwargs
        )
        assert not changed
        tasks.record_annotation(
            session,
            task.id,
            updated_at=T0 + timedelta(minutes=1),
            label_path="labels/b.zarr",
            **kwargs,
        )
        history = tasks.annotation_history(session, task.id)
        assert [(a.label_path, a.current) for a in history] == [
            ("labels/a.zarr", False),
            ("labels/b.zarr", True),
        ]
        labeled = volumes.get_crop(session, crop)
        assert (labeled.status, labeled.label_path, labeled.labeled_round) == (
            "labeled",
            "labels/b.zarr",
            1,
        )
        assert tasks.withdraw_annotations(session, task.id)
        assert volumes.get_crop(session, crop).status == "queued"
        assert not tasks.withdraw_annotations(session, task.id)


def test_an_older_annotation_newest_again_becomes_current_without_a_duplicate(
    ledger_project: Project,
) -> None:
    # A reviewer deletes annotation 8: annotation 7 (ingested before) is the newest again.
    with ledger_project.session() as session:
        crop = _volume_with_crops(session, 1)[0]
        task = tasks.queue_crop(session, crop, round_id=None, slices=[0], pushed={})
        common = dict(annotator="a@lab", lead_time=None, was_cancelled=False, round_number=1)
        first, _ = tasks.record_annotation(
            session,
            task.id,
            ls_annotation_id=7,
            updated_at=T0,
            label_path="labels/7.zarr",
            **common,
        )
        tasks.record_annotation(
            session,
            task.id,
            ls_annotation_id=8,
            updated_at=T0 + timedelta(minutes=5),
            label_path="labels/8.zarr",
            **common,
        )
    for _ in range(2):  # every later ingest sees the same state
        with ledger_project.session() as session:
            again, _ = tasks.record_annotation(
                session,
                task.id,
                ls_annotation_id=7,
                updated_at=T0,
                label_path="labels/7.zarr",
                **common,
            )
    with ledger_project.session() as session:
        history = tasks.annotation_history(session, task.id)
        assert [(a.ls_annotation_id, a.current) for a in history] == [(7, True), (8, False)]
        assert again.id == first.id
        assert tasks.current_annotation(session, task.id) == again
        assert volumes.get_crop(session, crop).label_path == "labels/7.zarr"


def test_a_review_task_replaces_the_crops_task_and_its_answer_the_labels(
    ledger_project: Project,
) -> None:
    with ledger_project.session() as session:
        crop, other = _volume_with_crops(session, 2)
        first = tasks.queue_crop(session, crop, round_id=None, slices=[0], pushed={},
                                 ls_task_id=10)  # fmt: skip
        waiting = tasks.queue_crop(
            session, other, round_id=None, slices=[0], pushed={}, ls_task_id=11
        )
        unsure, _ = tasks.record_annotation(
            session, first.id, ls_annotation_id=1, annotator=None, lead_time=None,
            updated_at=T0, label_path="labels/a.zarr", was_cancelled=False, round_number=2,
            status="unsure",
        )  # fmt: skip
        assert tasks.open_task_crop_ids(session) == {other}
        assert tasks.labels_annotation(session, crop) == unsure
        with pytest.raises(StateError, match="is queued, not labeled"):
            tasks.queue_review(session, other, round_id=None, slices=[0], pushed={"review": {}})
        review = {"labels": "labels/a.zarr", "annotation": unsure.id, "round": 2}
        reviewing = tasks.queue_review(session, crop, round_id=None, slices=[0],
                                       pushed={"review": review}, ls_task_id=12)  # fmt: skip
        assert [t.id for t in tasks.list_tasks(session, active=True)] == [waiting.id, reviewing.id]
        assert tasks.open_task_crop_ids(session) == {crop, other}
        assert tasks.unsure_crop_ids(session) == {crop}  # the reviewed labels still in force
        assert tasks.replacing_review(session, 10) == (replace(first, active=False), reviewing)
        assert tasks.replacing_review(session, 11) is None

        answer, _ = tasks.record_annotation(
            session, reviewing.id, ls_annotation_id=5, annotator=None, lead_time=None,
            updated_at=T0, label_path="labels/b.zarr", was_cancelled=False, round_number=4,
            status="done",
        )  # fmt: skip
        assert tasks.current_annotation(session, first.id) is None
        assert tasks.labels_annotation(session, crop) == answer
        assert tasks.unsure_crop_ids(session) == set()
        reviewed = volumes.get_crop(session, crop)
        assert (reviewed.label_path, reviewed.labeled_round) == ("labels/b.zarr", 2)

        assert tasks.withdraw_annotations(session, reviewing.id)
        restored = volumes.get_crop(session, crop)
        assert (restored.status, restored.label_path) == ("labeled", "labels/a.zarr")
        assert tasks.labels_annotation(session, crop) == replace(unsure, current=True)
        assert tasks.open_task_crop_ids(session) == {crop, other}


def test_a_skip_marks_the_crop_skipped_with_its_reason(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        crop = _volume_with_crops(session, 1)[0]
        task = tasks.queue_crop(session, crop, round_id=None, slices=[0], pushed={})
        tasks.record_annotation(
            session,
            task.id,
            ls_annotation_id=1,
            annotator=None,
            lead_time=None,
            updated_at=T0,
            label_path=None,
            was_cancelled=True,
            round_number=0,
            skip_reason="blurry",
        )
        skipped = volumes.get_crop(session, crop)
    assert (skipped.status, skipped.skip_reason) == ("skipped", "blurry")


def test_settings(ledger_project: Project) -> None:
    with ledger_project.session() as session:
        assert settings.get_setting(session, "ls_project_id") is None
        settings.set_setting(session, "ls_project_id", "3")
        settings.set_setting(session, "ls_project_id", "4")
    with ledger_project.session() as session:
        assert settings.get_setting(session, "ls_project_id") == "4"
