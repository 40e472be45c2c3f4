"""Predicting a whole volume with the project's newest model: samples, then consensus instances."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr

from activeseg.core.cluster import segment
from activeseg.core.models.checkpoint import load_model
from activeseg.core.tiling import predict_to_zarr
from activeseg.data.volumes import raw_array
from activeseg.durable import claim_output
from activeseg.errors import InputError
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.fit import latest_model_path
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

CONSENSUS = "consensus"


def resolve_volume(project: Project, volume: str) -> Path:
    """Return the zarr path of a registered volume's name, or of an activeseg volume path."""
    path = Path(volume)
    if path.exists():
        return path
    with project.session() as session:
        return project.resolve(pool_volumes.get_volume(session, volume).path)


def predict_volume(
    project: Project, volume: str, out: Path, layout: str = "auto", *, force: bool = False
) -> dict[str, Any]:
    """Predict a volume into ``out`` (samples or moments) and add its consensus instances.

    An existing, non-empty ``out`` is refused unless ``force`` (see durable.claim_output).
    """
    if layout not in ("auto", "samples", "moments"):
        raise InputError(f"--samples must be auto, samples or moments; got {layout!r}")
    claim_output(out, force=force)
    trained = load_model(latest_model_path(project))
    raw = raw_array(resolve_volume(project, volume))
    chosen = predict_to_zarr(
        trained, raw, out, layout=cast(Literal["auto", "samples", "moments"], layout)
    )
    foreground, embedding = _mean_maps(out, chosen, trained.config.model.shared_embedding)
    consensus = segment(
        foreground,
        embedding,
        **project.config.cluster.options(),
    )
    zarr.open_group(out, mode="a").create_array(CONSENSUS, data=consensus, overwrite=True)
    n = len(np.unique(consensus[consensus > 0]))
    log.info("predicted %s: %d instances", volume, n)
    return {
        "out": str(out),
        "layout": chosen,
        "instances": n,
        "samples": trained.model.n_samples,
        "checkpoint": str(trained.path),
    }


def _mean_maps(out: Path, layout: str, shared: bool) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean foreground and the embedding to cluster it in (see segment_consensus)."""

    def read(name: str) -> np.ndarray:
        return np.asarray(zarr.open_array(out, path=name, mode="r")[...], dtype=np.float32)

    if layout == "samples":
        embedding = read("embedding")
        return read("foreground").mean(axis=0), embedding.mean(axis=0) if shared else embedding[0]
    if not shared:
        log.warning("ensemble members' mean embedding is clustered: predict with --samples samples")
    return read("foreground_mean"), read("embedding_mean")
