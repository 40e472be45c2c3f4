"""Scoring the pool with a model, and selecting the next batch from the stored scores.

Scoring predicts the round's candidate crops, clusters each sample and the consensus, turns
the samples into voxel and instance uncertainty, writes the maps to zarr (for viewing and for
the annotators' overlay) and stores one row of score parts per crop. Selection only ranks
stored scores, so a strategy can be changed without predicting again.

What a round costs does not grow with the pool:

- candidates: every unlabeled pool crop, or with ``acquisition.max_candidates`` a seeded
  sample stratified by volume (``core.acquisition.candidate_sample``);
- a score cache in the ledger per (crop, model): the model is a fingerprint of the checkpoint
  files and the scoring settings, so an unchanged model is not run again on a crop it scored
  (its maps are hard-linked into the round), and a new checkpoint never reuses old scores;
- resumable: scores are committed in batches as they are computed, and a crop that already
  has a score row in this round is skipped, so a crash half-way loses at most one batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.config import ComputeConfig, Config
from activeseg.core.acquisition import CropScores, candidate_sample, rank_crops
from activeseg.core.cluster import segment_consensus, segment_samples
from activeseg.core.models.checkpoint import (
    CONFIG_FILE,
    NORMALIZATION_FILE,
    WEIGHTS_FILE,
    TrainedModel,
    load_model,
)
from activeseg.core.tiling import crop_tiling, predict_array, torch_threads
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
from activeseg.data.ome import Placement, describe_crop_analysis
from activeseg.data.volumes import read_raw
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CachedScore, CropInfo, VolumeInfo
from activeseg.workflows.distributed import (
    ModelRef,
    forget_calibration,
    loaded_model,
    task_map,
)
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
COLUMNS = ("uncertainty", "bald", "instance", "cost")
# Bump when what a score holds changes: every cached score is then computed again.
SCORE_VERSION = "scores-2"  # 2: a crop is predicted on its own, without margin
COMMIT_EVERY = 16


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
    """Return the model's segmentation and uncertainty of one raw (C, Z, Y, X) crop, predicted
    on its own as training sees a patch (:func:`activeseg.core.tiling.crop_tiling`)."""
    z, y, x = (int(n) for n in raw.shape[1:])
    tiling = crop_tiling(trained, (z, y, x))
    prediction = predict_array(
        trained, raw, core=tiling.core, margin=tiling.margin, threads=config.train.threads
    )
    options = config.cluster.options()
    samples = segment_samples(prediction.foreground, prediction.embedding, **options)
    spaces = trained.config.model.embedding_spaces
    consensus = segment_consensus(
        prediction.foreground, prediction.embedding, spaces=spaces, **options
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


# The (Z, Y, X) maps of a crop analysis besides its consensus.
CROP_MAPS = ("foreground", "entropy", "mutual_information")


def write_analysis(path: Path, analysis: CropAnalysis, placement: Placement) -> None:
    """Write a crop's consensus, per-sample segmentations and uncertainty maps to zarr: an
    OME image of its mutual information placed at the crop (``placement``) in its volume."""
    if path.exists():  # new files, never rewritten in place: other rounds may link to these
        shutil.rmtree(path)
    root = zarr.open_group(path, mode="w")
    for name in ("consensus", "samples", *CROP_MAPS):
        root.create_array(name, data=np.ascontiguousarray(getattr(analysis, name)))
    root.attrs["instances"] = [risk_record(r) for r in analysis.risks]
    describe_crop_analysis(path, placement, "mutual_information", ["consensus", *CROP_MAPS])


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


@dataclass(frozen=True)
class ScoreReport:
    """What a score stage did: crops with a score in the round, and where each came from.

    computed: crops run through the model (or read for descriptors) in this call; cached:
    taken from the score cache (same model); resumed: already scored in this round before.
    """

    unlabeled: int
    scored: int
    computed: int
    cached: int
    resumed: int
    model: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-able data."""
        return {
            "unlabeled": self.unlabeled,
            "scored": self.scored,
            "computed": self.computed,
            "cached": self.cached,
            "resumed": self.resumed,
        }


def score_pool(
    project: Project,
    round_id: int,
    round_number: int,
    model_path: Path | None,
    progress: Progress | None = None,
    *,
    commit_every: int = COMMIT_EVERY,
) -> ScoreReport:
    """Score the round's candidates not scored yet in it, in committed batches; report it.

    Without a model (round 0) only model-free parts are stored: raw-intensity descriptors.
    Crops run here, or on the project's Dask cluster (``compute``) with the same results;
    either way this process alone writes the ledger, in crop order.
    """
    key = model_key(model_path, project.config) if model_path is not None else None
    with project.session() as session:
        crops = pool_volumes.list_crops(session, status="unlabeled", split="pool")
        volumes = {v.id: v for v in pool_volumes.list_volumes(session)}
        cache = pool_rounds.cached_scores(session, key) if key is not None else {}
        candidates = candidate_crops(project, crops, round_number, set(cache))
        pool_rounds.keep_scores(session, round_id, {c.id for c in candidates})
        done = pool_rounds.scored_crop_ids(session, round_id)
    todo = [c for c in candidates if c.id not in done]
    scorer = _Scorer(project, round_id, round_number, key, cache)
    hits = {c.id for c in todo if scorer.cache_hit(c)}
    model = ModelRef.of(model_path) if model_path is not None else None
    jobs = [scorer.job(c, volumes[c.volume_id], model) for c in todo if c.id not in hits]
    step = max(commit_every, 1)
    with task_map(project.config.compute if jobs else ComputeConfig()) as run:
        computed = run(score_crop, jobs)
        for start in range(0, len(todo), step):
            for crop in todo[start : start + step]:
                scorer.add(crop, None if crop.id in hits else next(computed))
            scorer.commit()
            if progress is not None:
                finished = len(candidates) - len(todo) + min(start + step, len(todo))
                progress(finished, len(candidates))
    if key is not None:
        with project.session() as session:
            pool_rounds.prune_score_cache(session, key)
    return ScoreReport(
        unlabeled=len(crops),
        scored=len(candidates),
        computed=scorer.computed,
        cached=scorer.cached,
        resumed=len(candidates) - len(todo),
        model=key,
    )


def candidate_crops(
    project: Project, crops: Sequence[CropInfo], round_number: int, cached: set[int]
) -> list[CropInfo]:
    """Return the crops a round scores: all, or ``max_candidates`` stratified by volume.

    The sample is seeded by (acquisition.seed, round number); crops with a cached score under
    the current model come first within their volume, since they cost nothing to score.
    """
    acq = project.config.acquisition
    ordered = sorted(crops, key=lambda c: c.id)
    picked = candidate_sample(
        [c.id for c in ordered],
        [c.volume_id for c in ordered],
        acq.max_candidates,
        (acq.seed, round_number),
        preferred=[c.id in cached for c in ordered],
    )
    return [ordered[i] for i in picked]


@dataclass(frozen=True)
class ScoreJob:
    """One crop to run through a model (or, without one, to describe), as a worker gets it.

    volume: the volume's zarr path; analysis: where the crop's maps go (both absolute);
    voxel_size: the volume's, so the maps overlay the raw in a viewer.
    """

    crop: CropInfo
    volume: str
    analysis: str
    model: ModelRef | None
    config: Config
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)


def score_crop(job: ScoreJob) -> dict[str, Any]:
    """Return one crop's score parts; its maps are written to job.analysis first.

    The result depends on the job alone: the model is seeded per crop and torch runs with
    the config's thread count, in whichever process this runs (see workflows.distributed).
    """
    raw = read_raw(Path(job.volume), job.crop.box)
    if job.model is None:
        return {"descriptor": intensity_descriptor(raw).tolist()}
    trained = loaded_model(job.model, load_model)
    with torch_threads(job.config.train.threads):
        analysis = analyse_crop(trained, raw, job.config)
    forget_calibration()  # analyse_crop calibrated the model to this crop
    write_analysis(Path(job.analysis), analysis, Placement(job.voxel_size, job.crop.origin))
    flagged = [risk_record(r) for r in analysis.risks if r.flags]
    return {
        **analysis.columns(job.config),
        "flagged": flagged,
        "descriptor": analysis.descriptor.tolist(),
    }


@dataclass
class _Scorer:
    """Gathers crops' scores (cached or computed) and commits them, and new cache entries,
    in batches."""

    project: Project
    round_id: int
    round_number: int
    key: str | None
    cache: dict[int, CachedScore]
    computed: int = 0
    cached: int = 0
    rows: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    fresh: list[CachedScore] = field(default_factory=list)

    def cache_hit(self, crop: CropInfo) -> bool:
        """Return whether the crop's score comes from the cache (its maps still exist)."""
        entry = self.cache.get(crop.id)
        return bool(entry and entry.analysis and self.project.resolve(entry.analysis).exists())

    def job(self, crop: CropInfo, volume: VolumeInfo, model: ModelRef | None) -> ScoreJob:
        """Return the job that computes the crop's score."""
        target = analysis_path(self.project, self.round_number, crop.id)
        path = str(self.project.resolve(volume.path).resolve())
        config = self.project.config
        return ScoreJob(crop, path, str(target.resolve()), model, config, volume.voxel_size)

    def add(self, crop: CropInfo, computed: dict[str, Any] | None) -> None:
        """Add a crop's score: computed parts, or (None) those of the cache."""
        parts = self._from_cache(crop) if computed is None else self._fresh(crop, computed)
        strategy = self.project.config.acquisition.strategy
        self.rows.append((crop.id, float(parts.get(strategy, 0.0)), parts))

    def commit(self) -> None:
        """Store the scores (and cache entries) gathered since the last commit."""
        with self.project.session() as session:
            pool_rounds.add_scores(session, self.round_id, self.rows)
            pool_rounds.cache_scores(session, self.fresh)
        self.rows, self.fresh = [], []

    def _from_cache(self, crop: CropInfo) -> dict[str, Any]:
        entry = self.cache[crop.id]
        assert entry.analysis is not None  # cache_hit said so
        source = self.project.resolve(entry.analysis)
        target = analysis_path(self.project, self.round_number, crop.id)
        if source.resolve() != target.resolve():
            link_tree(source, target)
        self.cached += 1
        return entry.parts

    def _fresh(self, crop: CropInfo, parts: dict[str, Any]) -> dict[str, Any]:
        self.computed += 1
        if self.key is not None:
            path = analysis_path(self.project, self.round_number, crop.id)
            self.fresh.append(CachedScore(crop.id, self.key, parts, self.project.relative(path)))
        return parts


def model_key(model_path: Path, config: Config) -> str:
    """Return a fingerprint of a checkpoint and the settings its scores depend on (hex).

    The checkpoint's config, weights and normalization, plus the project's cluster section
    and score reduction: scores cached under an equal key are what scoring would give again.
    """
    digest = hashlib.sha256(SCORE_VERSION.encode())
    for name in (CONFIG_FILE, WEIGHTS_FILE, NORMALIZATION_FILE):
        digest.update(name.encode())
        with (Path(model_path) / name).open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    acq = config.acquisition
    settings = {
        "cluster": config.cluster.model_dump(mode="json"),
        "reduction": [acq.reduction, acq.quantile, list(acq.region)],
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def link_tree(source: Path, target: Path) -> None:
    """Make ``target`` a copy of the folder ``source``, hard-linking files where it can."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, target, copy_function=os.link)
    except OSError:  # another file system: copy instead
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


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
    picked = rank_crops(scores, strategy, **options) if ordered else []
    ranking = [ordered[p.index].crop_id for p in picked]
    with project.session() as session:
        crops = {c.id: c for c in pool_volumes.list_crops(session, split="pool")}
        ranking = apart_first(ranking, crops)
        pool_rounds.record_selection(session, round_id, ranking, batch_size)
    return ranking[:batch_size]


def boxes_overlap(a: CropInfo, b: CropInfo) -> bool:
    """Return whether two crops of the same volume share a voxel."""
    return a.volume_id == b.volume_id and all(
        a0 < b1 and b0 < a1 for a0, a1, b0, b1 in zip(a.origin, a.end, b.origin, b.end, strict=True)
    )


def apart_first(ranking: Sequence[int], crops: dict[int, CropInfo]) -> list[int]:
    """Return the ranking with crops that overlap a better-ranked kept crop moved to the end.

    Taken in rank order, a crop is kept when it shares no voxel with a crop kept before it;
    the others follow in their order. Any prefix of the result is then as free of overlaps
    as the pool allows: annotators never label the same voxels twice in one round. Kept crops
    are filed under the grid cells (as large as the largest crop) they touch, so a crop is
    compared only with the few kept crops of its own cells: linear in the pool.
    """
    cell = tuple(max((c.end[a] - c.origin[a] for c in crops.values()), default=1) for a in range(3))
    kept: list[CropInfo] = []
    filed: dict[tuple[int, ...], list[CropInfo]] = defaultdict(list)
    later: list[int] = []
    for crop_id in ranking:
        crop = crops.get(crop_id)
        keys = [] if crop is None else _cells(crop, cell)
        if crop is None or any(boxes_overlap(crop, o) for k in keys for o in filed[k]):
            later.append(crop_id)
            continue
        kept.append(crop)
        for key in keys:
            filed[key].append(crop)
    return [c.id for c in kept] + later


def _cells(crop: CropInfo, cell: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Return the (volume, z, y, x) grid cells a crop touches (at most 2 per axis)."""
    spans = [
        range(o // n, (e - 1) // n + 1) for o, e, n in zip(crop.origin, crop.end, cell, strict=True)
    ]
    return [(crop.volume_id, z, y, x) for z in spans[0] for y in spans[1] for x in spans[2]]


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


@dataclass(frozen=True)
class PushPlan:
    """What a push of a round can take: crops waiting, crops added to the selection, and why
    fewer than asked (None when the request is met)."""

    waiting: int
    added: int
    shortfall: str | None = None


def widen_selection(
    project: Project, round_id: int, round_number: int, limit: int | None
) -> PushPlan:
    """Return the round's push plan, first selecting more ranked crops if ``limit`` asks so.

    The selection grows in rank order, by the unlabeled crops past it, until ``limit`` crops
    wait for a task (without ``limit``: nothing is added). ``shortfall`` says exactly why
    fewer than asked can go: how many were ranked, and how many of those are already pushed,
    labeled or skipped.
    """
    with project.session() as session:
        scores = pool_rounds.round_scores(session, round_id)
        status = {c.id: c.status for c in pool_volumes.list_crops(session)}
        ranking = [s.crop_id for s in scores if s.rank is not None]
        chosen = sum(s.selected for s in scores)
        free = [c for c in ranking if status.get(c) == "unlabeled"]
        waiting = [s.crop_id for s in scores if s.selected and status.get(s.crop_id) == "unlabeled"]
        want = len(waiting) if limit is None else limit
        extra = [c for c in free if c not in set(waiting)][: max(want - len(waiting), 0)]
        if extra:
            last = max(ranking.index(c) for c in extra)
            pool_rounds.record_selection(session, round_id, ranking, max(chosen, last + 1))
    count = len(waiting) + len(extra)
    if limit is None and count == 0:
        return PushPlan(0, 0, _shortfall(round_number, ranking, status, chosen))
    if limit is not None and count < limit:
        return PushPlan(count, len(extra), _shortfall(round_number, ranking, status, chosen))
    return PushPlan(count, len(extra))


def _shortfall(
    round_number: int, ranking: Sequence[int], status: dict[int, str], chosen: int
) -> str:
    """Return why a round has fewer crops to push than asked, in numbers."""
    states: dict[str, int] = {}
    for crop_id in ranking:
        states[status.get(crop_id, "gone")] = states.get(status.get(crop_id, "gone"), 0) + 1
    left = states.pop("unlabeled", 0)
    taken = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none taken"
    return (
        f"round {round_number} ranked {len(ranking)} crops ({chosen} selected); "
        f"{taken}; {left} still unlabeled to push"
    )


def plan_slices(project: Project, round_number: int, crop: CropInfo) -> tuple[list[int], str]:
    """Return the z-slices (crop coordinates) a task shows, and why those.

    With a model: the slices where it is most unsure (mutual information), never the crop's
    first or last slice when others are left (at the crop's z edge the data is often noise).
    Round 0: evenly spaced slices.
    """
    n = min(project.config.labelstudio.slices, crop.shape[0])
    path = analysis_path(project, round_number, crop.id)
    if path.exists():
        uncertainty = read_analysis(path, "mutual_information")
        edge = 1 if crop.shape[0] - 2 >= n else 0
        inner = uncertainty[edge : crop.shape[0] - edge]
        chosen = [z + edge for z in choose_slices(inner, n)]
        return chosen, "slices where the model is most unsure"
    spaced = np.linspace(0, crop.shape[0] - 1, n + 2)[1:-1].round().astype(int)
    return sorted({int(z) for z in spaced}), "evenly spaced slices (no model yet)"
