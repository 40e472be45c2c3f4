"""The record of rounds as typed summaries, learning curves as a picture, one round in detail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, RoundInfo, ScoreInfo, StageInfo, TaskInfo
from activeseg.workflows.project import Project

CURVE_METRICS = ("AP50", "avF1", "C", "S")
QUALITY_METRICS = ("voxel_error_auroc", "instance_error_auroc")
HIDDEN_PARTS = ("descriptor", "flagged")


@dataclass(frozen=True)
class StageTiming:
    """A stage of a round: its status and how long it ran (None while unfinished)."""

    status: str
    seconds: float | None


@dataclass(frozen=True)
class RoundSummary:
    """One row of the history: labels used, crops added, strategy, metrics and timings.

    ``correction_fraction``: of the shown voxels, the share the annotator repainted in the
    pre-annotations answered this round (None without pre-annotations).
    """

    number: int
    strategy: str
    labeled_crops: int
    trained_on: int | None
    crops_added: int
    correction_fraction: float | None
    training_seconds: float | None
    metrics: dict[str, Any]
    stages: dict[str, StageTiming]
    finished: bool
    abandoned: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Return the row as JSON-able data (the keys of `activeseg history --json`)."""
        return {
            "round": self.number,
            "strategy": self.strategy,
            "labeled_crops": self.labeled_crops,
            "trained_on": self.trained_on,
            "crops_added": self.crops_added,
            "correction_fraction": self.correction_fraction,
            "training_seconds": self.training_seconds,
            "metrics": dict(self.metrics),
            "stages": {
                name: {"status": t.status, "seconds": t.seconds} for name, t in self.stages.items()
            },
            "finished": self.finished,
            "abandoned": self.abandoned,
        }


@dataclass(frozen=True)
class RankedCrop:
    """A crop's score in a round: rank, whether selected, and the parts of the score.

    ``parts``: the score columns (uncertainty, bald, instance, cost, flagged instances), without
    the diversity descriptor.
    """

    crop_id: int
    rank: int | None
    score: float
    selected: bool
    parts: dict[str, Any]

    @classmethod
    def of(cls, score: ScoreInfo) -> RankedCrop:
        """Return the ranked crop of a stored score (its descriptor left out)."""
        parts = {k: v for k, v in score.parts.items() if k != "descriptor"}
        return cls(score.crop_id, score.rank, score.score, score.selected, parts)

    @property
    def flagged(self) -> list[dict[str, Any]]:
        """Return the crop's flagged instances (id, flags, risks)."""
        return list(self.parts.get("flagged", []))

    def as_dict(self) -> dict[str, Any]:
        """Return the crop as JSON-able data, its parts inline (`activeseg score --json`)."""
        return {
            "crop_id": self.crop_id,
            "rank": self.rank,
            "score": self.score,
            "selected": self.selected,
            **self.parts,
        }


@dataclass(frozen=True)
class Pick:
    """A ranked crop of a round in detail: where it is, and which slices its task shows."""

    crop_id: int
    volume: str
    origin: tuple[int, int, int]
    rank: int | None
    selected: bool
    score: float
    parts: dict[str, Any]
    flagged: list[dict[str, Any]]
    slices: tuple[int, ...] | None
    why_slices: str | None

    @classmethod
    def of(cls, score: ScoreInfo, crop: CropInfo, task: TaskInfo | None) -> Pick:
        """Return the pick of a stored score, its crop and its task (None if not pushed)."""
        return cls(
            crop_id=score.crop_id,
            volume=crop.volume_name,
            origin=crop.origin,
            rank=score.rank,
            selected=score.selected,
            score=score.score,
            parts={k: v for k, v in score.parts.items() if k not in HIDDEN_PARTS},
            flagged=list(score.parts.get("flagged", [])),
            slices=tuple(task.slices) if task else None,
            why_slices=task.pushed.get("reason") if task else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """Return the pick as JSON-able data."""
        return {
            "crop_id": self.crop_id,
            "volume": self.volume,
            "origin": list(self.origin),
            "rank": self.rank,
            "selected": self.selected,
            "score": self.score,
            "parts": dict(self.parts),
            "flagged": list(self.flagged),
            "slices": None if self.slices is None else list(self.slices),
            "why_slices": self.why_slices,
        }


@dataclass(frozen=True)
class RoundDetail:
    """What a round picked and why, its model checkpoint, stages and config snapshot.

    ``stages``: the recorded stages (their outputs as stored, a mapping per stage).
    """

    number: int
    strategy: str
    batch_size: int
    checkpoint: str | None
    metrics: dict[str, Any]
    top: tuple[Pick, ...]
    config: str
    stages: tuple[StageInfo, ...]

    def as_dict(self, *, config: bool = True) -> dict[str, Any]:
        """Return the round as JSON-able data (the config snapshot left out if not ``config``)."""
        data: dict[str, Any] = {
            "round": self.number,
            "strategy": self.strategy,
            "batch_size": self.batch_size,
            "checkpoint": self.checkpoint,
            "metrics": dict(self.metrics),
            "top": [p.as_dict() for p in self.top],
            "config": self.config,
            "stages": [
                {"name": s.name, "status": s.status, "outputs": s.outputs, "error": s.error}
                for s in self.stages
            ],
        }
        if not config:
            del data["config"]
        return data


def _seconds(round_info: RoundInfo, stage: str) -> float | None:
    record = round_info.stage(stage)
    if record is None or record.finished_at is None:
        return None
    return (record.finished_at - record.started_at).total_seconds()


def _summary(info: RoundInfo, labeled: Sequence[CropInfo]) -> RoundSummary:
    train, select, ingest = info.stage("train"), info.stage("select"), info.stage("ingest")
    return RoundSummary(
        number=info.number,
        strategy=info.strategy,
        labeled_crops=sum(
            1 for c in labeled if c.labeled_round is None or c.labeled_round <= info.number
        ),
        trained_on=train.outputs.get("labeled_crops") if train else None,
        crops_added=len(select.outputs.get("selected", [])) if select else 0,
        correction_fraction=ingest.outputs.get("correction_fraction") if ingest else None,
        training_seconds=_seconds(info, "train"),
        metrics={k: v for k, v in info.metrics.items() if k != "volumes"},
        stages={s.name: StageTiming(s.status, _seconds(info, s.name)) for s in info.stages},
        finished=info.finished_at is not None,
        abandoned=info.abandoned,
    )


def round_history(project: Project) -> list[RoundSummary]:
    """Return one summary per round: labels used, crops added, strategy, metrics, timings."""
    with project.session() as session:
        rounds = pool_rounds.list_rounds(session)
        labeled = pool_volumes.list_crops(session, status="labeled", split="pool")
    return [_summary(info, labeled) for info in rounds]


def round_ranking(project: Project, number: int) -> list[RankedCrop]:
    """Return a round's scored crops, best rank first, with the parts of each score."""
    with project.session() as session:
        info = pool_rounds.get_round(session, number)
        scores = pool_rounds.round_scores(session, info.id)
    return [RankedCrop.of(s) for s in scores]


def round_detail(project: Project, number: int, top: int = 10) -> RoundDetail:
    """Return what a round picked and why, its model checkpoint and its config snapshot."""
    with project.session() as session:
        info = pool_rounds.get_round(session, number)
        scores = pool_rounds.round_scores(session, info.id)[:top]
        checkpoint = pool_rounds.latest_checkpoint(session, round_id=info.id)
        tasks = {t.crop_id: t for t in pool_tasks.list_tasks(session) if t.round_id == info.id}
        crops = {s.crop_id: pool_volumes.get_crop(session, s.crop_id) for s in scores}
    return RoundDetail(
        number=info.number,
        strategy=info.strategy,
        batch_size=info.batch_size,
        checkpoint=checkpoint.path if checkpoint else None,
        metrics=info.metrics,
        top=tuple(Pick.of(s, crops[s.crop_id], tasks.get(s.crop_id)) for s in scores),
        config=info.config,
        stages=info.stages,
    )


def plot_history(curves: Mapping[str, Sequence[RoundSummary]], path: Path) -> Path:
    """Draw validation metrics vs labeled crops (one line per run) and uncertainty quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_METRICS) + 1, figsize=(4 * (len(CURVE_METRICS) + 1), 3.6))
    for name, history in curves.items():
        rows = [r for r in history if r.metrics.get("AP50") is not None]
        x = [r.trained_on or r.labeled_crops for r in rows]
        for ax, metric in zip(axes, CURVE_METRICS, strict=False):
            ax.plot(x, [r.metrics.get(metric) for r in rows], marker="o", label=name)
        quality = axes[-1]
        for metric, style in zip(QUALITY_METRICS, ("-", "--"), strict=True):
            quality.plot(
                [r.number for r in rows],
                [r.metrics.get(metric) for r in rows],
                style,
                marker=".",
                label=f"{name}: {metric.split('_')[0]}",
            )
    for ax, metric in zip(axes, CURVE_METRICS, strict=False):
        ax.set(title=f"validation {metric}", xlabel="labeled crops", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set(title="error detection AUROC", xlabel="round", ylim=(0, 1))
    axes[-1].legend(fontsize=7)
    axes[-1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
