"""The record of rounds as typed summaries, learning curves as a picture, one round in detail."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import (
    AnnotationCost,
    CropInfo,
    RoundInfo,
    ScoreInfo,
    StageInfo,
    TaskInfo,
)
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
class Spent:
    """Labels spent up to a round in the annotator's units, over the measured annotations.

    slices: z-slices looked at; repainted: voxels painted or repainted from the
    pre-annotation; edits: instances added, removed, split or merged; measured: annotations
    whose cost is known (those answered before costs were recorded are not).
    """

    slices: int = 0
    repainted: int = 0
    edits: int = 0
    measured: int = 0

    def add(self, cost: AnnotationCost) -> Spent:
        """Return this plus one annotation's cost."""
        return Spent(
            self.slices + cost.slices,
            self.repainted + cost.repainted,
            self.edits + cost.edits,
            self.measured + 1,
        )

    def as_dict(self) -> dict[str, int]:
        """Return the spent labels as JSON-able data."""
        return {
            "slices": self.slices,
            "repainted": self.repainted,
            "edits": self.edits,
            "measured": self.measured,
        }


@dataclass(frozen=True)
class Outlook:
    """The stopping signal of a round: what one more round is expected to gain.

    next_gain: validation avF1 one more batch of labels is expected to add, from a fit of
    avF1 = a + b ln(labels) over the last evaluated rounds (None before two of them);
    avf1_change: avF1 against the previous evaluated round; epistemic: mean epistemic
    uncertainty (BALD) of the scored pool crops, and its change against the previous round;
    stop: whether next_gain is below ``loop.stop_gain`` (never while avF1 is still zero).
    """

    next_gain: float | None = None
    avf1_change: float | None = None
    epistemic: float | None = None
    epistemic_change: float | None = None
    stop: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Return the outlook as JSON-able data."""
        return {
            "next_gain": self.next_gain,
            "avF1_change": self.avf1_change,
            "epistemic": self.epistemic,
            "epistemic_change": self.epistemic_change,
            "stop": self.stop,
        }


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
    spent: Spent | None = None
    outlook: Outlook | None = None

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
            "spent": None if self.spent is None else self.spent.as_dict(),
            "outlook": None if self.outlook is None else self.outlook.as_dict(),
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


def _spent(number: int, costs: Sequence[tuple[int | None, AnnotationCost]]) -> Spent | None:
    if not costs:
        return None
    total = Spent()
    for labeled_round, cost in costs:
        if labeled_round is None or labeled_round <= number:
            total = total.add(cost)
    return total


def next_round_gain(labels: Sequence[float], values: Sequence[float], batch: int) -> float | None:
    """Return the metric one more batch of labels is expected to add.

    A least-squares fit of value = a + b ln(labels) over the points given (the last few
    evaluated rounds), extrapolated from the last point to ``batch`` more labels. None with
    fewer than two distinct label counts.
    """
    x = np.log(np.asarray(labels, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or labels[-1] <= 0:
        return None
    slope = float(np.polyfit(x, y, 1)[0])
    return slope * math.log((labels[-1] + batch) / labels[-1])


def with_outlook(
    rows: Sequence[RoundSummary],
    epistemic: Mapping[int, float],
    batch: Mapping[int, int],
    stop_gain: float,
    window: int = 4,
) -> list[RoundSummary]:
    """Return the rows with each round's stopping signal (see :class:`Outlook`).

    epistemic: mean pool BALD by round number; batch: the batch size by round number.
    """
    out: list[RoundSummary] = []
    points: list[tuple[float, float]] = []
    previous_epistemic: float | None = None
    for row in rows:
        f1, labels = row.metrics.get("avF1"), row.trained_on
        change = None
        if f1 is not None and labels:
            if points:
                change = float(f1) - points[-1][1]
            if not points or labels != points[-1][0]:
                points.append((float(labels), float(f1)))
        recent = points[-window:]
        gain = None
        if f1 is not None and recent:
            gain = next_round_gain(
                [p[0] for p in recent], [p[1] for p in recent], batch[row.number]
            )
        current = epistemic.get(row.number)
        moved = None
        if current is not None and previous_epistemic is not None:
            moved = current - previous_epistemic
        if current is not None:
            previous_epistemic = current
        # A curve flat at zero has not started (the model finds nothing yet): no reason to stop.
        stop = gain is not None and gain < stop_gain and bool(f1)
        outlook = Outlook(gain, change, current, moved, stop)
        out.append(replace(row, outlook=outlook))
    return out


def _summary(
    info: RoundInfo,
    labeled: Sequence[CropInfo],
    costs: Sequence[tuple[int | None, AnnotationCost]] = (),
) -> RoundSummary:
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
        spent=_spent(info.number, costs),
    )


def _mean_epistemic(scores: Sequence[ScoreInfo]) -> float | None:
    values = [float(s.parts["bald"]) for s in scores if s.parts.get("bald") is not None]
    return float(np.mean(values)) if values else None


def round_history(project: Project) -> list[RoundSummary]:
    """Return one summary per round: labels used and spent (in the annotator's units), crops
    added, strategy, metrics, timings, and the stopping signal."""
    with project.session() as session:
        rounds = pool_rounds.list_rounds(session)
        labeled = pool_volumes.list_crops(session, status="labeled", split="pool")
        costs = pool_tasks.labeled_costs(session)
        epistemic = {
            info.number: e
            for info in rounds
            if (e := _mean_epistemic(pool_rounds.round_scores(session, info.id))) is not None
        }
    rows = [_summary(info, labeled, costs) for info in rounds]
    batch = {info.number: info.batch_size for info in rounds}
    return with_outlook(rows, epistemic, batch, project.config.loop.stop_gain)


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
