"""Where tiles and crops are computed: in this process, or on a Dask cluster.

predict and the score stage hand their work to :func:`task_map` as a list of small,
picklable jobs. Without ``compute.workers`` or ``compute.scheduler`` the jobs run here, one at
a time, as they always did. With them, every job is submitted to ``dask.distributed`` at once,
a few per task (a LocalCluster on 127.0.0.1, or an existing scheduler), and the results come
back in job order, so the caller commits them to the ledger as it did serially: the ledger is
written by this process only. Workers write arrays straight to the project's zarr files,
which they must see at the same path (a shared file system mounted alike on every host).

A job's result depends on the job alone (its seeds are fixed per tile and per crop, torch's
thread count is the config's in every process), never on which worker ran it or when: the
output is identical to the serial run's. A job whose worker dies is run again by the
scheduler (``distributed.scheduler.allowed-failures``); a job that raises is retried
``TASK_RETRIES`` times before its error reaches the caller.

Dask is imported only when a cluster is asked for: ``pip install activeseg[cluster]``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from activeseg.config import ComputeConfig
from activeseg.core.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, TrainedModel, load_model
from activeseg.errors import InputError
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")
TaskMap = Callable[[Callable[[J], R], Sequence[J]], Iterator[R]]

TASK_RETRIES = 2
# Jobs run by one Dask task, at most; and the fewest tasks each worker should get.
MAX_JOBS_PER_TASK = 8
TASKS_PER_WORKER = 4
# Dask settings of the local cluster we start. Dask's nanny sets MALLOC_TRIM_THRESHOLD_ for
# its workers, which also turns off glibc's adaptive mmap threshold: every large tensor torch
# frees is unmapped and the next one faults its pages in again (about 1.5x the CPU of a
# crop, see BENCHMARKS.md "Scale-out"); its sampling profiler wakes every 10 ms, its memory
# and system monitors every 0.1 and 0.5 s (together ~3 % of a core per idle worker; the
# slower ones still pause a worker that runs out of memory). Workers started elsewhere
# (dask-jobqueue, dask worker) should get the same settings: README.
WORKER_SETTINGS = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.tick.interval": "200ms",
}


def with_compute(
    project: Project,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    train_processes: int | None = None,
) -> Project:
    """Return the project with its compute section overridden where a value is given (the
    command line's --workers, --scheduler, --nproc); the stored config is not changed."""
    update: dict[str, Any] = {}
    if workers is not None:
        update["workers"] = workers
    if scheduler is not None:
        update["scheduler"] = scheduler
    if train_processes is not None:
        update["train_processes"] = train_processes
    if not update:
        return project
    try:
        compute = ComputeConfig.model_validate(project.config.compute.model_dump() | update)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InputError(f"invalid compute option: {problems}") from exc
    return replace(project, config=project.config.model_copy(update={"compute": compute}))


def uses_dask(compute: ComputeConfig) -> bool:
    """Return whether jobs go to a Dask cluster (a scheduler, or local workers)."""
    return compute.scheduler is not None or compute.workers > 0


@contextmanager
def task_map(compute: ComputeConfig) -> Iterator[TaskMap[Any, Any]]:
    """Yield ``run(function, jobs)``: an iterator of function(job) for every job, in order.

    Serially the iterator computes each result when it is asked for (a crash loses only what
    was not consumed yet); on Dask every job is submitted at once, a few consecutive jobs per
    task (:func:`jobs_per_task`), and results are handed over in job order as they complete.
    The cluster (a LocalCluster) lives as long as the block.
    """
    if not uses_dask(compute):
        yield _serial_map
        return
    with dask_client(compute) as client:

        def run(function: Callable[[J], R], jobs: Sequence[J]) -> Iterator[R]:
            jobs = list(jobs)
            size = jobs_per_task(len(jobs), sum(client.nthreads().values()))
            batches = [jobs[start : start + size] for start in range(0, len(jobs), size)]
            futures = client.map(
                partial(_run_batch, function), batches, pure=False, retries=TASK_RETRIES
            )
            for future in futures:
                yield from future.result()
                future.release()

        yield run


def jobs_per_task(jobs: int, workers: int) -> int:
    """Return how many jobs one Dask task runs: enough that the scheduler's and the client's
    cost per task is shared by several crops or tiles (up to ``MAX_JOBS_PER_TASK``), while
    every worker still gets ``TASKS_PER_WORKER`` tasks or more, to even out their ends."""
    return max(1, min(MAX_JOBS_PER_TASK, jobs // max(1, workers * TASKS_PER_WORKER)))


def _run_batch(function: Callable[[J], R], jobs: Sequence[J]) -> list[R]:
    return [function(job) for job in jobs]


def _serial_map(function: Callable[[J], R], jobs: Sequence[J]) -> Iterator[R]:
    return (function(job) for job in jobs)


@contextmanager
def dask_client(compute: ComputeConfig) -> Iterator[Any]:
    """Yield a ``distributed.Client`` of compute's scheduler, or of a new LocalCluster of
    ``compute.workers`` single-threaded processes on 127.0.0.1 (closed after the block)."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError(
            "a Dask cluster was asked for (--workers, --scheduler or compute.scheduler) but "
            "dask.distributed is not installed: pip install 'activeseg[cluster]'"
        ) from exc
    if compute.scheduler is not None:
        with Client(compute.scheduler) as client:
            log.info("using the Dask scheduler at %s", compute.scheduler)
            yield client
        return
    with dask.config.set(WORKER_SETTINGS):
        cluster = LocalCluster(
            n_workers=compute.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    with cluster, Client(cluster) as client:
        log.info("started a LocalCluster of %d workers", compute.workers)
        yield client


def checkpoint_digest(path: Path) -> str:
    """Return a hex fingerprint of a checkpoint folder's config and weights."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update((Path(path) / name).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint as a job names it: its folder and its fingerprint."""

    path: str
    digest: str

    @classmethod
    def of(cls, path: Path) -> ModelRef:
        """Return the reference of a checkpoint folder."""
        return cls(str(path), checkpoint_digest(path))


@dataclass
class _Loaded:
    key: ModelRef | None = None
    model: TrainedModel | None = None
    calibrated_for: object = None


# One model per process: a worker loads a checkpoint once for all the jobs it runs.
_LOADED = _Loaded()


def loaded_model(ref: ModelRef, load: Callable[[Path], TrainedModel] = load_model) -> TrainedModel:
    """Return the model of a checkpoint, loaded (by load) once per process; the last one
    is kept."""
    if _LOADED.key != ref or _LOADED.model is None:
        _LOADED.model, _LOADED.key, _LOADED.calibrated_for = load(Path(ref.path)), ref, None
    return _LOADED.model


def calibrated_model(
    ref: ModelRef, source: object, calibrate: Callable[[TrainedModel], None]
) -> TrainedModel:
    """Return the process's model of ref, calibrated to source (calibrate runs once per
    source: a volume's tiles share its statistics)."""
    trained = loaded_model(ref)
    if _LOADED.calibrated_for != source:
        _LOADED.calibrated_for = None
        calibrate(trained)
        _LOADED.calibrated_for = source
    return trained


def forget_calibration() -> None:
    """Mark the process's model as calibrated to nothing (after a job calibrated it itself)."""
    _LOADED.calibrated_for = None
