"""Predicting a whole volume with the project's newest model: samples, then consensus instances.

Everything streams: tiles are predicted into a zarr group (samples or moments, and a voxel
uncertainty map), and the consensus instances are clustered block by block from it and
stitched across block borders (:mod:`activeseg.core.stitching`), so memory holds a tile or a
block at a time, never the volume. The volume is a registered volume's name, an activeseg
volume, or a file in any format ``activeseg import`` reads.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.config import ClusterConfig, ComputeConfig
from activeseg.core.models.checkpoint import TrainedModel, load_model
from activeseg.core.stitching import (
    ArrayMaps,
    Box,
    ClusterOptions,
    LabelStore,
    MeanMaps,
    MemoryStore,
    SampleMaps,
    StitchOptions,
    ZarrStore,
    plan_blocks,
    segment_blockwise,
)
from activeseg.core.tiling import (
    UNCERTAINTY,
    Layout,
    calibrate,
    predict_tile,
    predict_to_zarr,
    prediction_arrays,
    prepare_prediction,
    torch_threads,
    write_tile,
)
from activeseg.data.importers import FORMATS, read_source
from activeseg.data.ome import Placement, describe_prediction
from activeseg.data.sources import raw_source
from activeseg.data.volumes import RAW_PATH, raw_array
from activeseg.durable import claim_output
from activeseg.errors import InputError, VolumeFormatError
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.distributed import (
    ModelRef,
    calibrated_model,
    loaded_model,
    task_map,
    uses_dask,
)
from activeseg.workflows.fit import latest_model_path
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

CONSENSUS = "labels/consensus/0"  # an OME label image of the prediction group
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def resolve_volume(project: Project | None, volume: str) -> Path:
    """Return the path of a file, or the zarr path of a registered volume's name."""
    path = Path(volume)
    if path.exists():
        return path
    if project is None:
        raise InputError(f"{volume} is neither a file nor, outside a project, a volume name")
    with project.session() as session:
        return project.resolve(pool_volumes.get_volume(session, volume).path)


def guess_format(path: Path) -> str:
    """Return the format of a file: tiff or hdf5 by suffix; for zarr, "fisbe" (volumes/...),
    "activeseg" (a volume group with raw at "0") or "zarr" (any other group or array)."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not zarr"
        raise VolumeFormatError(
            f"{path} is not a readable zarr, TIFF (.tif) or HDF5 (.h5) file: {exc}"
        ) from exc
    if isinstance(node, zarr.Array):
        return "zarr"
    if "volumes" in node:
        return "fisbe"
    return "activeseg" if isinstance(node.get(RAW_PATH), zarr.Array) else "zarr"


def open_raw(
    project: Project | None, volume: str, fmt: str | None = None, raw_key: str | None = None
) -> Any:
    """Return the lazy raw (C, Z, Y, X) array of a registered volume or of a file.

    fmt: one of FORMATS, "activeseg", or None to guess it (:func:`guess_format`); raw_key: the
    raw dataset inside a zarr or HDF5 file (default "raw"). Nothing is read yet.
    """
    path = resolve_volume(project, volume)
    chosen = fmt or guess_format(path)
    if chosen == "activeseg":
        return raw_array(path)
    if chosen not in FORMATS:
        raise InputError(f"unknown format {chosen!r}; use one of activeseg, {', '.join(FORMATS)}")
    if chosen == "zarr" and isinstance(zarr.open(str(path), mode="r"), zarr.Array):
        return raw_source(zarr.open_array(str(path), mode="r"), str(path))
    return read_source(path, chosen, raw_key=raw_key).raw


def source_voxel_size(
    project: Project | None, volume: str, fmt: str | None = None, raw_key: str | None = None
) -> tuple[float, float, float]:
    """Return the (z, y, x) voxel size in µm of a registered volume or a file (1 if unknown)."""
    path = resolve_volume(project, volume)
    chosen = fmt or guess_format(path)
    if chosen == "activeseg":
        chosen = "zarr"  # an activeseg volume is an OME-Zarr image
    if chosen not in FORMATS:
        return (1.0, 1.0, 1.0)
    try:
        return read_source(path, chosen, raw_key=raw_key).voxel_size
    except VolumeFormatError:  # a bare zarr array: it carries no voxel size
        return (1.0, 1.0, 1.0)


def predict_volume(
    project: Project,
    volume: str,
    out: Path,
    layout: str = "auto",
    *,
    force: bool = False,
    fmt: str | None = None,
    raw_key: str | None = None,
    stitch: StitchOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict a volume into ``out`` (samples or moments, uncertainty) and add its consensus
    instances, clustered block by block; return a summary. ``progress(done, total)``: after
    each tile predicted in this process.

    volume: a registered volume's name or a file (fmt and raw_key as in :func:`open_raw`).
    An existing, non-empty ``out`` is refused unless ``force`` (see durable.claim_output).
    """
    if layout not in ("auto", "samples", "moments"):
        raise InputError(f"--samples must be auto, samples or moments; got {layout!r}")
    claim_output(out, force=force)
    raw = open_raw(project, volume, fmt, raw_key)
    trained = load_model(latest_model_path(project))
    chosen_layout = cast(Layout, layout)
    if uses_dask(project.config.compute):
        reference = RawRef(str(resolve_volume(project, volume).resolve()), fmt, raw_key)
        chosen = predict_on_cluster(project, trained, reference, out, chosen_layout)
    else:
        threads = project.config.train.threads
        chosen = predict_to_zarr(
            trained, raw, out, layout=chosen_layout, progress=progress, threads=threads
        )
    spaces = trained.config.model.embedding_spaces
    n = write_consensus(
        out, project.config.cluster, spaces=spaces, stitch=stitch, compute=project.config.compute
    )
    placement = Placement(source_voxel_size(project, volume, fmt, raw_key))
    source = volume if not Path(volume).exists() else str(Path(volume).resolve())
    describe_prediction(out, placement, n, image=UNCERTAINTY, labels=CONSENSUS, source=source)
    log.info("predicted %s: %d instances", volume, n)
    return {
        "out": str(out),
        "layout": chosen,
        "instances": n,
        "uncertainty": UNCERTAINTY,
        "samples": trained.model.n_samples,
        "checkpoint": str(trained.path),
    }


@dataclass(frozen=True)
class RawRef:
    """A raw volume as a job names it, for any process to open (see :func:`open_raw`)."""

    path: str
    fmt: str | None = None
    raw_key: str | None = None

    def open(self) -> Any:
        """Return the lazy raw (C, Z, Y, X) array."""
        return open_raw(None, self.path, self.fmt, self.raw_key)


@dataclass(frozen=True)
class TileJob:
    """One tile of a prediction: where to read, which model, which core box to write."""

    model: ModelRef
    raw: RawRef
    out: str
    box: Box
    margin: tuple[int, int, int]
    seed: int
    layout: str
    threads: int


def predict_on_cluster(
    project: Project, trained: TrainedModel, source: RawRef, out: Path, layout: Layout
) -> str:
    """Return the layout of a prediction written to out by the project's Dask cluster, one
    job per tile (each writes its own chunks); the same arrays as :func:`predict_to_zarr`."""
    raw = source.open()
    chosen, tiling = prepare_prediction(trained, raw, out, layout=layout)
    ref = ModelRef.of(trained.path) if trained.path else None
    if ref is None:
        raise InputError("a cluster prediction needs a model saved in a checkpoint folder")
    shape = (int(raw.shape[1]), int(raw.shape[2]), int(raw.shape[3]))
    threads = project.config.train.threads
    jobs = [
        TileJob(ref, source, str(out.resolve()), box, tiling.margin, 0, chosen, threads)
        for box in tiling.boxes(shape)
    ]
    with task_map(project.config.compute) as run:
        for _ in run(predict_tile_job, jobs):
            pass
    log.info("predicted %d tiles of %s on the cluster", len(jobs), source.path)
    return chosen


def predict_tile_job(job: TileJob) -> None:
    """Predict one tile and write it into the prediction group (runs on a worker)."""
    raw = job.raw.open()
    trained = loaded_model(job.model)
    with torch_threads(job.threads):  # the project's, as serial predict: the same bits
        calibrated_model(job.model, (job.raw, job.out), lambda model: calibrate(model, raw))
        tile = predict_tile(trained, raw, job.box, job.margin, job.seed)
    write_tile(prediction_arrays(Path(job.out)), job.box, tile, job.layout)


def prediction_maps(group: zarr.Group, spaces: int = 1) -> MeanMaps:
    """Return the mean maps of a prediction group to cluster (see segment_consensus): sample
    means of a samples layout, whose samples come in ``spaces`` embedding spaces (one per
    ensemble member), or the moments (one mean embedding per member when they hold several)."""
    if group.attrs.get("layout") == "samples" or "embedding" in group:
        return SampleMaps(group["foreground"], group["embedding"], spaces)
    if "foreground_mean" in group and "embedding_mean" in group:
        return ArrayMaps(group["foreground_mean"], group["embedding_mean"])
    raise VolumeFormatError(
        f"{group.store_path} holds neither samples (foreground, embedding) nor moments "
        f"(foreground_mean, embedding_mean)"
    )


def write_consensus(
    out: Path,
    cluster: ClusterConfig,
    *,
    spaces: int = 1,
    stitch: StitchOptions | None = None,
    compute: ComputeConfig | None = None,
) -> int:
    """Return the number of consensus instances written to ``out``/consensus (uint32).

    The prediction group's mean maps are clustered block by block and stitched; with several
    embedding ``spaces`` (the model's ``embedding_spaces``) every block is clustered in each
    and fused, as segment_consensus does. Blocks' labels wait in a scratch zarr beside ``out``
    (removed afterwards) when there is more than one; then ``compute`` may name a Dask
    cluster that clusters the blocks (see workflows.distributed), with the same result.
    """
    group = zarr.open_group(str(out), mode="a")
    maps = prediction_maps(group, spaces)
    stitch = stitch or StitchOptions()
    chunks = tuple(min(b, n) for b, n in zip(stitch.block, maps.shape, strict=True))
    labels = group.create_array(
        CONSENSUS, shape=maps.shape, chunks=chunks, dtype=np.uint32, fill_value=0, overwrite=True
    )

    def write(box: Box, block: npt.NDArray[np.uint32]) -> None:
        labels[box] = block

    options = ClusterOptions(**cluster.options())
    if len(plan_blocks(maps.shape, stitch.block, stitch.margin)) == 1:
        return segment_blockwise(maps, write, options, stitch, store=MemoryStore())
    with (
        tempfile.TemporaryDirectory(prefix=f".{out.name}.blocks-", dir=out.parent) as scratch,
        task_map(compute or ComputeConfig()) as run,
    ):
        store: LabelStore = ZarrStore(Path(scratch) / "blocks.zarr")
        return segment_blockwise(maps, write, options, stitch, store=store, map_blocks=run)
