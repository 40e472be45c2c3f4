"""The record of rounds as plain data, learning curves as a picture, and one round in detail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import RoundInfo
from activeseg.workflows.project import Project

CURVE_METRICS = ("AP50", "avF1", "C", "S")
QUALITY_METRICS = ("voxel_error_auroc", "instance_error_auroc")


def _seconds(round_info: RoundInfo, stage: str) -> float | None:
    record = round_info.stage(stage)
    if record is None or record.finished_at is None:
        return None
    return (record.finished_at - record.started_at).total_seconds()


def round_history(project: Project) -> list[dict[str, Any]]:
    """Return one summary per round: labels used, crops added, strategy, metrics, timings."""
    with project.session() as session:
        rounds = pool_rounds.list_rounds(session)
        labeled = pool_volumes.list_crops(session, status="labeled", split="pool")
    history = []
    for info in rounds:
        train = info.stage("train")
        select = info.stage("select")
        ingest = info.stage("ingest")
        history.append(
            {
                "round": info.number,
                "strategy": info.strategy,
                "labeled_crops": sum(
                    1 for c in labeled if c.labeled_round is None or c.labeled_round <= info.number
                ),
                "trained_on": (train.outputs.get("labeled_crops") if train else None),
                "crops_added": len(select.outputs.get("selected", [])) if select else 0,
                # Of the shown voxels, the fraction the annotator repainted in the
                # pre-annotations answered this round (None without pre-annotations).
                "correction_fraction": ingest.outputs.get("correction_fraction")
                if ingest
                else None,
                "training_seconds": _seconds(info, "train"),
                "metrics": {k: v for k, v in info.metrics.items() if k != "volumes"},
                "stages": {
                    s.name: {"status": s.status, "seconds": _seconds(info, s.name)}
                    for s in info.stages
                },
                "finished": info.finished_at is not None,
            }
        )
    return history


def round_detail(project: Project, number: int, top: int = 10) -> dict[str, Any]:
    """Return what a round picked and why, its model checkpoint and its config snapshot."""
    with project.session() as session:
        info = pool_rounds.get_round(session, number)
        scores = pool_rounds.round_scores(session, info.id)
        checkpoint = pool_rounds.latest_checkpoint(session, round_id=info.id)
        tasks = {t.crop_id: t for t in pool_tasks.list_tasks(session) if t.round_id == info.id}
        crops = {s.crop_id: pool_volumes.get_crop(session, s.crop_id) for s in scores[:top]}
    picks = []
    for score in scores[:top]:
        crop, task = crops[score.crop_id], tasks.get(score.crop_id)
        parts = {k: v for k, v in score.parts.items() if k not in ("descriptor", "flagged")}
        picks.append(
            {
                "crop_id": score.crop_id,
                "volume": crop.volume_name,
                "origin": list(crop.origin),
                "rank": score.rank,
                "selected": score.selected,
                "score": score.score,
                "parts": parts,
                "flagged": score.parts.get("flagged", []),
                "slices": list(task.slices) if task else None,
                "why_slices": task.pushed.get("reason") if task else None,
            }
        )
    return {
        "round": info.number,
        "strategy": info.strategy,
        "batch_size": info.batch_size,
        "checkpoint": checkpoint.path if checkpoint else None,
        "metrics": info.metrics,
        "top": picks,
        "config": info.config,
        "stages": [
            {"name": s.name, "status": s.status, "outputs": s.outputs, "error": s.error}
            for s in info.stages
        ],
    }


def plot_history(curves: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    """Draw validation metrics vs labeled crops (one line per run) and uncertainty quality."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_METRICS) + 1, figsize=(4 * (len(CURVE_METRICS) + 1), 3.6))
    for name, history in curves.items():
        rows = [r for r in history if r["metrics"].get("AP50") is not None]
        x = [r["trained_on"] or r["labeled_crops"] for r in rows]
        for ax, metric in zip(axes, CURVE_METRICS, strict=False):
            ax.plot(x, [r["metrics"].get(metric) for r in rows], marker="o", label=name)
        quality = axes[-1]
        for metric, style in zip(QUALITY_METRICS, ("-", "--"), strict=True):
            quality.plot(
                [r["round"] for r in rows],
                [r["metrics"].get(metric) for r in rows],
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
