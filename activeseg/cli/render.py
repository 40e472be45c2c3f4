"""How the commands look in a terminal: rich tables, stage lines and progress bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from activeseg.cli.common import console, errors

if TYPE_CHECKING:  # the commands import the workflows when they run (a fast --help)
    from activeseg.workflows.check import CheckReport
    from activeseg.workflows.history import RankedCrop, RoundDetail, RoundSummary
    from activeseg.workflows.status import ProjectStatus

HEADLINE_METRICS = ("AP50", "avF1", "C", "S", "voxel_error_auroc")
SCORE_COLUMNS = ("uncertainty", "bald", "instance")
StagePrinter = Callable[[str, str, Mapping[str, Any]], None]


def print_status(status: ProjectStatus) -> None:
    """Print the project's volumes and crop counts as tables, and its number of rounds."""
    console.print(f"project [bold]{status.project}[/]")
    volumes = Table(
        "volume", "split", "shape (Z, Y, X)", "channels", "ground truth", title="volumes"
    )
    for v in status.volumes:
        volumes.add_row(
            v.name,
            v.split,
            " × ".join(map(str, v.shape)),
            str(v.channels),
            "yes" if v.has_ground_truth else "no",
        )
    console.print(volumes)
    crops = Table("split", *status.crop_statuses, title="crops")
    for split, counts in status.crops_by_split.items():
        crops.add_row(split, *(str(counts[s]) for s in status.crop_statuses))
    console.print(crops)
    console.print(f"rounds: {status.rounds}")


def stage_printer() -> StagePrinter:
    """Return a loop event handler printing one line per stage on stderr (also under
    ``--json``: stdout then holds only the JSON)."""

    def show(stage: str, state: str, outputs: Mapping[str, Any]) -> None:
        if state == "running":
            errors.print(f"  [cyan]▶[/] {stage} …")
        elif state == "done":
            errors.print(f"  [green]✓[/] {stage} {brief(outputs)}", highlight=False)
        else:
            errors.print(f"  [dim]↷ {stage} (done before)[/]")

    return show


def brief(outputs: Mapping[str, Any]) -> str:
    """Return a stage's scalar outputs as dim 'key=value' text (evaluation: the headline)."""
    keep = {k: v for k, v in outputs.items() if v is not None and not isinstance(v, (list, dict))}
    if "AP50" in keep:
        keep = {k: keep[k] for k in HEADLINE_METRICS if k in keep}
    shown = ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items()
    )
    return f"[dim]{shown}[/]" if shown else ""


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """Yield a (done, total) callback that drives a rich progress bar on stderr."""
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), console=errors) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def training_bar(steps: int) -> Iterator[Callable[[int, int, float], None]]:
    """Yield a (step, total, loss) callback that drives the training bar on stderr."""
    columns = (
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors) as bar:
        task = bar.add_task("train", total=steps, loss="")
        yield lambda step, total, loss: bar.update(task, completed=step, loss=f"loss {loss:.3f}")


def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def print_history(history: Sequence[RoundSummary]) -> None:
    """Print the rounds as a table (narrow enough for an 80-column terminal)."""
    table = Table(
        "round",
        "strategy",
        "crops",
        "+",
        "sec",
        "AP50",
        "avF1",
        "C",
        "S",
        "MI AUC",
        "fixed",
        "slices",
        "edits",
        "next",
        title="rounds",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for row in history:
        spent, outlook = row.spent, row.outlook
        table.add_row(
            str(row.number),
            f"{row.strategy} (abandoned)" if row.abandoned else row.strategy,
            str(row.labeled_crops),
            str(row.crops_added),
            _number(row.training_seconds, 0),
            *(_number(row.metrics.get(k)) for k in HEADLINE_METRICS),
            _number(row.correction_fraction),
            "–" if spent is None else str(spent.slices),
            "–" if spent is None else str(spent.edits),
            _gain(outlook.next_gain if outlook else None),
        )
    console.print(table)
    console.print(
        "[dim]crops: labeled so far; sec: training time; MI AUC: voxel-error AUROC of the "
        "uncertainty; fixed: share of shown voxels repainted in the pre-annotations; slices, "
        "edits: labels spent so far (slices looked at; instances added, removed, split, "
        "merged); next: avF1 one more round is expected to add[/]"
    )
    if history and history[-1].outlook is not None:
        print_outlook(history[-1])


def _gain(value: float | None) -> str:
    return "–" if value is None else f"{value:+.3f}"


def print_outlook(row: RoundSummary) -> None:
    """Print a round's stopping signal: the expected gain of one more round, and why."""
    outlook = row.outlook
    if outlook is None:
        return
    parts = []
    if outlook.avf1_change is not None:
        parts.append(f"avF1 {outlook.avf1_change:+.3f} since the last evaluated round")
    if outlook.epistemic_change is not None:
        parts.append(f"pool epistemic uncertainty {outlook.epistemic_change:+.4f}")
    if outlook.next_gain is None:
        verdict = "one more round: not enough evaluated rounds to estimate its gain"
    else:
        advice = "stopping is reasonable" if outlook.stop else "worth continuing"
        verdict = f"one more round: expected avF1 {outlook.next_gain:+.3f} ({advice})"
    if parts:
        verdict += "; " + ", ".join(parts)
    console.print(verdict, highlight=False)


def _flagged(flagged: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(f"#{f['id']} {'/'.join(f['flags'])}" for f in flagged)


def print_round_detail(detail: RoundDetail) -> None:
    """Print what a round picked and why as a table, then its config snapshot."""
    console.print(
        f"round {detail.number}: strategy {detail.strategy}, "
        f"batch {detail.batch_size}, model {detail.checkpoint}"
    )
    table = Table("rank", "crop", "volume", "origin", "score", "parts", "flagged", "slices")
    for pick in detail.top:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in pick.parts.items() if isinstance(v, float))
        table.add_row(
            str(pick.rank),
            str(pick.crop_id),
            pick.volume,
            str(list(pick.origin)),
            f"{pick.score:.3f}",
            parts,
            _flagged(pick.flagged),
            str(list(pick.slices)) if pick.slices else "",
            style="bold" if pick.selected else None,
        )
    console.print(table)
    console.print("[dim]config snapshot:[/]")
    console.print(detail.config, highlight=False)


def print_ranking(ranking: Sequence[RankedCrop], title: str) -> None:
    """Print ranked crops with the parts of their scores (selected ones in bold)."""
    table = Table("rank", "crop", "score", *SCORE_COLUMNS, "flagged", title=title)
    for row in ranking:
        table.add_row(
            str(row.rank),
            str(row.crop_id),
            f"{row.score:.3f}",
            *(f"{row.parts[k]:.3f}" if k in row.parts else "–" for k in SCORE_COLUMNS),
            _flagged(row.flagged),
            style="bold" if row.selected else None,
        )
    console.print(table)


def print_metrics(metrics: Mapping[str, Any], title: str) -> None:
    """Print the scalar metrics as a table (nested results are left out)."""
    table = Table("metric", "value", title=title)
    for key, value in metrics.items():
        if not isinstance(value, dict):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def print_check(report: CheckReport) -> None:
    """Print what a consistency check looked at and what it found."""
    looked = ", ".join(f"{n} {what}" for what, n in report.checked.items())
    console.print(f"checked {looked}")
    for problem in report.problems:
        mark = "[green]repaired[/]" if problem.repaired else "[red]problem[/]"
        console.print(
            f"  {mark} {problem.kind}: {problem.where}: {problem.detail}", highlight=False
        )
    console.print("consistent" if report.consistent else "[bold red]not consistent[/]")
