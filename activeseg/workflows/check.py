"""A consistency check of a project, like ``git fsck``: the ledger against the files.

Every file the ledger references exists and opens; every labeled crop has its labels; no
stage is left running without a live holder of the round lock; no crop queued without an open
task; no leftover partial writes. ``repair`` fixes only what is safe: it removes partial
writes no live process is making, returns stuck crops to the pool and, given a Label Studio
client, retires the tasks deleted there.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

from activeseg.core.models.checkpoint import CHECKPOINT_FILES
from activeseg.data.volumes import raw_array, read_crop_labels
from activeseg.durable import PARTIAL_SUFFIX
from activeseg.errors import ActivesegError, LabelStudioError, LockError
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import settings as pool_settings
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.locks import hold_lock, is_held
from activeseg.workflows.project import Project
from activeseg.workflows.push import PROJECT_SETTING, reconcile_deleted

WRITER_LOCKS = ("import", "ingest", "round")


@dataclass(frozen=True)
class Problem:
    """One inconsistency: what kind, what it concerns, and whether ``--repair`` fixed it."""

    kind: str
    where: str
    detail: str
    repaired: bool = False


@dataclass(frozen=True)
class CheckReport:
    """What a check found; consistent when there are no problems left unrepaired."""

    checked: dict[str, int]
    problems: list[Problem] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """Return whether nothing is wrong (repaired problems count as fixed)."""
        return all(p.repaired for p in self.problems)

    def as_dict(self) -> dict[str, object]:
        """Return what ``check --json`` prints."""
        return {
            "consistent": self.consistent,
            "checked": self.checked,
            "problems": [p.__dict__ for p in self.problems],
        }


def check_project(project: Project, *, repair: bool = False) -> CheckReport:
    """Return what is inconsistent between the project's ledger and its files.

    With ``repair``, a project that pushed to Label Studio also has the tasks deleted there
    retired (what every ingest does; the offline check cannot see them).
    """
    checked: dict[str, int] = {}
    problems: list[Problem] = []
    if repair and _pushed_to_labelstudio(project):
        problems.extend(_deleted_tasks(project))
    for finder in CHECKS:
        problems.extend(finder(project, checked))
    problems.extend(_queued(project, checked, repair))
    problems.extend(_partials(project, checked, repair))
    return CheckReport(checked, problems)


def _pushed_to_labelstudio(project: Project) -> bool:
    with project.session() as session:
        return pool_settings.get_setting(session, PROJECT_SETTING) is not None


def _deleted_tasks(project: Project) -> list[Problem]:
    try:
        env_file = project.root / ".env"
        with (
            hold_lock(project.root, "ingest"),
            closing(LabelStudioClient.from_env(env_file)) as client,
        ):
            reconciled = reconcile_deleted(project, client)
    except (LabelStudioError, LockError) as exc:
        return [Problem("tasks not reconciled", "Label Studio", str(exc))]
    detail = "retired; crops without labels are back in the pool"
    return [Problem("task deleted in Label Studio", f"{reconciled.deleted} tasks", detail,
                    repaired=True)] if reconciled.deleted else []  # fmt: skip


def _queued(project: Project, checked: dict[str, int], repair: bool) -> list[Problem]:
    """Crops queued for annotation with no open task: nobody will ever answer them."""
    with project.session() as session:
        open_crops = {t.crop_id for t in pool_tasks.list_tasks(session, active=True)}
        stuck = [c.id for c in pool_volumes.list_crops(session, status="queued")
                 if c.id not in open_crops]  # fmt: skip
        checked["queued crops"] = len(pool_volumes.list_crops(session, status="queued"))
        if repair:
            for crop_id in stuck:
                pool_volumes.set_crop_status(session, crop_id, "unlabeled")
    detail = "returned to the pool" if repair else "no open task; `check --repair` frees it"
    return [Problem("crop queued without a task", f"crop {c}", detail, repaired=repair)
            for c in stuck]  # fmt: skip


def _volumes(project: Project, checked: dict[str, int]) -> Iterator[Problem]:
    with project.session() as session:
        volumes = pool_volumes.list_volumes(session)
    checked["volumes"] = len(volumes)
    for volume in volumes:
        try:
            raw_array(project.resolve(volume.path))
        except ActivesegError as exc:
            yield Problem("volume unreadable", volume.name, str(exc))


def _labels(project: Project, checked: dict[str, int]) -> Iterator[Problem]:
    with project.session() as session:
        crops = pool_volumes.list_crops(session, status="labeled")
    checked["labeled crops"] = len(crops)
    for crop in crops:
        if crop.label_path is None:
            yield Problem("labels missing", f"crop {crop.id}", "labeled, but no label path")
            continue
        try:
            read_crop_labels(project.resolve(crop.label_path))
        except ActivesegError as exc:
            yield Problem("labels unreadable", f"crop {crop.id}", str(exc))


def _annotations(project: Project, checked: dict[str, int]) -> Iterator[Problem]:
    with project.session() as session:
        tasks = pool_tasks.list_tasks(session)
        versions = [a for t in tasks for a in pool_tasks.annotation_history(session, t.id)]
    checked["tasks"], checked["annotations"] = len(tasks), len(versions)
    for annotation in versions:
        if annotation.label_path and not project.resolve(annotation.label_path).exists():
            where = f"task {annotation.task_id}, annotation {annotation.id}"
            yield Problem("annotation file missing", where, annotation.label_path)


def _checkpoints(project: Project, checked: dict[str, int]) -> Iterator[Problem]:
    with project.session() as session:
        checkpoints = pool_rounds.recent_checkpoints(session, limit=1_000_000)
    checked["checkpoints"] = len(checkpoints)
    for checkpoint in checkpoints:
        folder = project.resolve(checkpoint.path)
        missing = [name for name in CHECKPOINT_FILES if not (folder / name).is_file()]
        if missing:
            yield Problem("checkpoint incomplete", checkpoint.path, f"missing {missing}")


def _stages(project: Project, checked: dict[str, int]) -> Iterator[Problem]:
    with project.session() as session:
        current = pool_rounds.open_round(session)
    checked["open rounds"] = int(current is not None)
    if current is None or is_held(project.root, "round"):
        return
    for stage in current.stages:
        if stage.status == "running":
            where = f"round {current.number}, stage {stage.name}"
            yield Problem("stage left running", where, "no live round holds the lock; "
                          "`activeseg round` resumes it")  # fmt: skip


def _partials(project: Project, checked: dict[str, int], repair: bool) -> list[Problem]:
    folders = (project.volumes_dir, project.labels_dir, project.models_dir)
    found = [
        p for folder in folders if folder.is_dir()
        for p in folder.rglob(f"*{PARTIAL_SUFFIX}")
    ]  # fmt: skip
    checked["partial writes"] = len(found)
    if not found:
        return []
    if not repair:
        return [Problem("partial write", project.relative(p), "left by an interrupted write")
                for p in found]  # fmt: skip
    with ExitStack() as stack:
        try:  # while every writer's lock is ours, no live process is writing these
            for name in WRITER_LOCKS:
                stack.enter_context(hold_lock(project.root, name))
        except LockError as exc:
            return [Problem("partial write", project.relative(p), f"not removed: {exc}")
                    for p in found]  # fmt: skip
        return [_remove(project, p) for p in found]


def _remove(project: Project, path: Path) -> Problem:
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return Problem("partial write", project.relative(path), "removed", repaired=True)


CHECKS: tuple[Callable[[Project, dict[str, int]], Iterator[Problem]], ...] = (
    _volumes,
    _labels,
    _annotations,
    _checkpoints,
    _stages,
)
