"""Scoring the pool with a model, and selecting the next batch from the stored scores.

Scoring predicts every unlabeled pool crop, clusters each sample and the consensus, turns the
samples into voxel and instance uncertainty, writes the maps to zarr (for viewing and for the
annotators' overlay) and stores one row of score parts per crop. Selection only ranks stored
scores, so a strategy can be changed without predicting again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.config import Config
from activeseg.core.acquisition import CropScores, select_batch
from activeseg.core.cluster import segment_consensus, segment_samples
from activeseg.core.models.checkpoint import TrainedModel, load_model
from activeseg.core.tiling import predict_array
from activeseg.core.uncertainty import (
    InstanceRisk,
    choose_slices,
    embedding_descriptor,
    instance_error_score,
    instance_uncertainty,
    intensity_descriptor,
    mutual_information,
    predictive_entropy,
    reduce_crop,
)
from activeseg.data.volumes import read_raw
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
COLUMNS = ("uncertainty", "bald", "instance", "cost")


@dataclass(frozen=True)
class CropAnalysis:
    """What the model says about one crop.

    consensus: (Z, Y, X) uint32 instances of the sample mean; samples: (S, Z, Y, X) uint32.
    foreground: (Z, Y, X) float32 mean probability. entropy, mutual_information: (Z, Y, X)
    float32 (total and epistemic uncertainty). descriptor: (D,) float32 for diversity.
    """

    consensus: npt.NDArray[np.uint32]
    samples: npt.NDArray[np.uint32]
    foreground: npt.NDArray[np.float32]
    entropy: npt.NDArray[np.float32]
    mutual_information: npt.NDArray[np.float32]
    risks: list[InstanceRisk]
    descriptor: npt.NDArray[np.float32]

    def columns(self, config: Config) -> dict[str, float]:
        """Return the crop's score columns under the config's reduction."""
        acq = config.acquisition
        options: dict[str, Any] = {
            "q": acq.quantile,
            "region": acq.region,
            "threshold": config.cluster.foreground_threshold,
        }
        return {
            "uncertainty": reduce_crop(
                self.entropy, self.foreground, acq.reduction, instances=self.risks, **options
            ),
            "bald": reduce_crop(
                self.mutual_information,
                self.foreground,
                acq.reduction,
                instances=self.risks,
                **options,
            ),
            "instance": instance_error_score(self.risks),
            "cost": 1.0 + len(self.risks),
        }


def analyse_crop(trained: TrainedModel, raw: npt.NDArray[Any], config: Config) -> CropAnalysis:
    """Return the model's segmentation and uncertainty of one raw (C, Z, Y, X) crop."""
    prediction = predict_array(trained, raw)
    options = config.cluster.options()
    samples = segment_samples(prediction.foreground, prediction.embedding, **options)
    shared = trained.config.model.shared_embedding
    consensus = segment_consensus(
        prediction.foreground, prediction.embedding, shared_space=shared, **options
    )
    foreground = prediction.foreground.mean(axis=0)
    return CropAnalysis(
        consensus=consensus,
        samples=samples,
        foreground=foreground.astype(np.float32),
        entropy=predictive_entropy(prediction.foreground),
        mutual_information=mutual_information(prediction.foreground),
        risks=instance_uncertainty(consensus, samples),
        descriptor=embedding_descriptor(prediction.embedding.mean(axis=0), foreground),
    )


def analysis_path(project: Project, round_number: int, crop_id: int) -> Path:
    """Return where a crop's prediction and uncertainty maps of a round are stored."""
    return project.predictions_dir / f"round-{round_number:03d}" / f"crop-{crop_id}.zarr"


def write_analysis(path: Path, analysis: CropAnalysis) -> None:
    """Write a crop's consensus, per-sample segmentations and uncertainty maps to zarr."""
    root = zarr.open_group(path, mode="w")
    for name in ("consensus", "samples", "foreground", "entropy", "mutual_information"):
        root.create_array(name, data=np.ascontiguousarray(getattr(analysis, name)))
    root.attrs["instances"] = [risk_record(r) for r in analysis.risks]


def read_analysis(path: Path, name: str) -> npt.NDArray[Any]:
    """Return one stored map of a crop analysis (``consensus``, ``mutual_information``, ...)."""
    return np.asarray(zarr.open_array(path, path=name, mode="r")[...])


def read_instance_risks(path: Path) -> list[dict[str, Any]]:
    """Return the per-instance uncertainty records stored with a crop analysis."""
    return list(zarr.open_group(path, mode="r").attrs.get("instances", []))  # type: ignore[arg-type]


def risk_record(risk: InstanceRisk) -> dict[str, Any]:
    """Return an instance's uncertainty as plain JSON-able data."""
    return {
        "id": int(risk.id),
        "size": int(risk.size),
        "stability": float(risk.stability),
        "split_risk": float(risk.split_risk),
        "merge_risk": float(risk.merge_risk),
        "flags": sorted(risk.flags),
    }


def score_pool(
    project: Project,
    round_id: int,
    round_number: int,
    model_path: Path | None,
    progress: Progress | None = None,
) -> int:
    """Score every unlabeled pool crop for a round and store the scores; return how many.

    Without a model (round 0) only model-free parts are stored: raw-intensity descriptors.
    """
    with project.session() as session:
        crops = pool_volumes.list_crops(session, status="unlabeled", split="pool")
        volumes = {v.id: v for v in pool_volumes.list_volumes(session)}
    trained = load_model(model_path) if model_path is not None else None
    rows = []
    for done, crop in enumerate(crops):
        raw = read_raw(project.resolve(volumes[crop.volume_id].path), crop.box)
        rows.append(_score_crop(project, trained, raw, crop, round_number))
        if progress is not None:
            progress(done + 1, len(crops))
    strategy = project.config.acquisition.strategy
    with project.session() as session:
        pool_rounds.save_scores(
            session,
            round_id,
            [(crop_id, float(parts.get(strategy, 0.0)), parts) for crop_id, parts in rows],
        )
    return len(rows)


def _score_crop(
    project: Project,
    trained: TrainedModel | None,
    raw: npt.NDArray[Any],
    crop: CropInfo,
    round_number: int,
) -> tuple[int, dict[str, Any]]:
    if trained is None:
        return crop.id, {"descriptor": intensity_descriptor(raw).tolist()}
    analysis = analyse_crop(trained, raw, project.config)
    write_analysis(analysis_path(project, round_number, crop.id), analysis)
    flagged = [risk_record(r) for r in analysis.risks if r.flags]
    return crop.id, {
        **analysis.columns(project.config),
        "flagged": flagged,
        "descriptor": analysis.descriptor.tolist(),
    }


def select_crops(project: Project, round_id: int, strategy: str, batch_size: int) -> list[int]:
    """Rank a round's stored scores with a strategy, record ranks; return the selected crops."""
    with project.session() as session:
        stored = pool_rounds.round_scores(session, round_id)
    acq = project.config.acquisition
    ordered = sorted(stored, key=lambda s: s.crop_id)
    scores = _crop_scores([s.parts for s in ordered])
    descriptors = np.array([s.parts["descriptor"] for s in ordered]) if ordered else None
    options: dict[str, Any] = {
        "descriptors": descriptors,
        "diversity": acq.diversity,
        "cost_aware": acq.cost_aware,
        "cost_alpha": acq.cost_alpha,
        "seed": acq.seed + round_id,
    }
    picked = select_batch(scores, strategy, len(ordered), **options) if ordered else []
    ranking = [ordered[p.index].crop_id for p in picked]
    with project.session() as session:
        pool_rounds.record_selection(session, round_id, ranking, batch_size)
    return ranking[:batch_size]


def _crop_scores(parts: Sequence[dict[str, Any]]) -> CropScores:
    columns = {
        name: np.array([p[name] for p in parts], dtype=np.float64)
        for name in COLUMNS
        if parts and all(name in p for p in parts)
    }
    return CropScores(count=len(parts), **columns)


def selected_crops(project: Project, round_id: int) -> list[CropInfo]:
    """Return a round's selected crops that still wait for a task, best rank first."""
    with project.session() as session:
        chosen = [s for s in pool_rounds.round_scores(session, round_id) if s.selected]
        crops = [pool_volumes.get_crop(session, s.crop_id) for s in chosen]
    return [c for c in crops if c.status == "unlabeled"]


def plan_slices(project: Project, round_number: int, crop: CropInfo) -> tuple[list[int], str]:
    """Return the z-slices (crop coordinates) a task shows, and why those.

    With a model: the slices where it is most unsure (mutual information). Round 0: evenly
    spaced slices.
    """
    n = min(project.config.labelstudio.slices, crop.shape[0])
    path = analysis_path(project, round_number, crop.id)
    if path.exists():
        uncertainty = read_analysis(path, "mutual_information")
        return choose_slices(uncertainty, n), "slices where the model is most unsure"
    spaced = np.linspace(0, crop.shape[0] - 1, n + 2)[1:-1].round().astype(int)
    return sorted({int(z) for z in spaced}), "evenly spaced slices (no model yet)"
