"""The `activeseg` command line: parse, load config, call one library function, print.

Library errors (activeseg.errors) become one clean line on stderr and an exit code:
2 for bad input or usage, 1 for an internal failure.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from activeseg.errors import ActivesegError

app = typer.Typer(
    name="activeseg",
    help="Active-learning annotation loop for 3-D neuron instance segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
errors = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ProjectOption = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        envvar="ACTIVESEG_PROJECT",
        file_okay=False,
        help="Project directory (default: the current directory or a parent holding one).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def command(name: str | None = None, group: typer.Typer | None = None) -> Callable[[F], F]:
    """Register a CLI command that turns activeseg errors into a message and an exit code."""

    def register(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except ActivesegError as exc:
                errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(exc.exit_code) from None

        (group or app).command(name)(wrapper)
        return func

    return register


def _finite(data: Any) -> Any:
    """Return data with NaN and infinities as None (strict JSON has no NaN)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def emit_json(data: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(_finite(data), indent=2, default=str, allow_nan=False) + "\n")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    """Active-learning annotation loop for 3-D neuron instance segmentation.

    Start with [bold]activeseg init DIR[/], import volumes, then run [bold]activeseg round[/].
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@command("init")
def init_cmd(
    directory: Annotated[Path, typer.Argument(help="Directory of the new project.")],
    config: Annotated[
        str, typer.Option("--config", "-c", help="Config file or built-in name.")
    ] = "default",
) -> None:
    """Create a project: its config and a migrated pool database.

    Example: [bold]activeseg init myproject --config demo[/]
    """
    from activeseg.workflows.project import init_project

    project = init_project(directory, config)
    console.print(f"created project in [bold]{project.root}[/]")


@command("upgrade")
def upgrade_cmd(project_dir: ProjectOption = None) -> None:
    """Migrate the project's pool database to this version of activeseg.

    Example: [bold]activeseg upgrade -p myproject[/]
    """
    from activeseg.pool import db
    from activeseg.workflows.project import database_url, open_project

    project = open_project(project_dir, check=False)
    db.upgrade(database_url(project.root))
    console.print(f"pool database at revision {db.head_revision()}")


@command("synth")
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Output zarr (FISBe layout).")],
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume size Z Y X.")] = (
        32,
        128,
        128,
    ),
    neurons: Annotated[int, typer.Option(min=1, help="Number of neurons.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same volume).")] = 0,
) -> None:
    """Write a synthetic MCFO-like volume with ground truth in the FISBe layout.

    Example: [bold]activeseg synth vol0.zarr --shape 32 128 128 --neurons 8 --seed 0[/]
    """
    from activeseg.data.fisbe import write_fisbe
    from activeseg.data.synthetic import generate_mcfo

    volume = generate_mcfo(shape, neurons, seed)
    write_fisbe(out, volume.raw, volume.instances)
    console.print(f"wrote {out} ({len(volume.instances.ids())} neurons, shape {list(shape)})")


@command("import")
def import_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Files to import.")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="fisbe, zarr, tiff or hdf5.")
    ] = "fisbe",
    split: Annotated[str, typer.Option(help="pool, val or test.")] = "pool",
    as_labels: Annotated[
        bool, typer.Option("--as-labels", help="Use the file's labels for training.")
    ] = False,
    raw_key: Annotated[
        str | None, typer.Option("--raw", help="Raw dataset inside a zarr/HDF5 file.")
    ] = None,
    labels_key: Annotated[
        str | None,
        typer.Option("--labels", help="Labels dataset (zarr/HDF5) or label file (TIFF)."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Volume name (one file only).")] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register volumes in the project and tile them into candidate crops.

    Ground truth in the file stays hidden from training (for simulated annotation) unless
    --as-labels is given.

    Example: [bold]activeseg import vol0.zarr vol1.zarr --format fisbe --split pool[/]
    """
    from activeseg.errors import InputError
    from activeseg.workflows.importing import import_volume
    from activeseg.workflows.project import open_project

    if name and len(paths) > 1:
        raise InputError("--name can only be used when importing one file")
    project = open_project(project_dir)
    imported = []
    with console.status("importing") as status:
        for path in paths:
            info = import_volume(
                project,
                path,
                fmt,
                split=split,
                as_labels=as_labels,
                name=name,
                raw_key=raw_key,
                labels_key=labels_key,
                progress=lambda message: status.update(message),
            )
            volume = info.volume
            imported.append(
                {
                    "name": volume.name,
                    "shape": list(volume.shape),
                    "split": volume.split,
                    "crops": info.crops,
                    "note": info.note,
                }
            )
    if as_json:
        emit_json({"imported": imported})
        return
    for item in imported:
        console.print(
            f"imported [bold]{item['name']}[/] {item['shape']} into {item['split']}: "
            f"{item['crops']} crops" + (f" ({item['note']})" if item["note"] else "")
        )


@command("status")
def status_cmd(project_dir: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Show the project's volumes, crops by split and status, and rounds.

    Example: [bold]activeseg status --json[/]
    """
    from activeseg.workflows.project import open_project
    from activeseg.workflows.status import project_status

    status = project_status(open_project(project_dir))
    if as_json:
        emit_json(status)
        return
    _print_status(status)


def _print_status(status: dict[str, Any]) -> None:
    console.print(f"project [bold]{status['project']}[/]")
    volumes = Table(
        "volume", "split", "shape (Z, Y, X)", "channels", "ground truth", title="volumes"
    )
    for v in status["volumes"]:
        volumes.add_row(
            v["name"],
            v["split"],
            " × ".join(map(str, v["shape"])),
            str(v["channels"]),
            "yes" if v["has_ground_truth"] else "no",
        )
    console.print(volumes)
    crops = Table("split", *status["crop_statuses"], title="crops")
    for split, counts in status["crops_by_split"].items():
        crops.add_row(split, *(str(counts[s]) for s in status["crop_statuses"]))
    console.print(crops)
    console.print(f"rounds: {status['rounds']}")


def _stage_printer(as_json: bool) -> Callable[[str, str, dict[str, Any]], None]:
    def show(stage: str, state: str, outputs: dict[str, Any]) -> None:
        if as_json:
            return
        if state == "running":
            console.print(f"  [cyan]▶[/] {stage} …")
        elif state == "done":
            console.print(f"  [green]✓[/] {stage} {_brief(outputs)}", highlight=False)
        else:
            console.print(f"  [dim]↷ {stage} (done before)[/]")

    return show


def _brief(outputs: dict[str, Any]) -> str:
    keep = {k: v for k, v in outputs.items() if v is not None and not isinstance(v, (list, dict))}
    if "AP50" in keep:  # evaluation: the headline metrics only
        keep = {k: keep[k] for k in ("AP50", "avF1", "C", "S", "voxel_error_auroc") if k in keep}
    shown = ", ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items()
    )
    return f"[dim]{shown}[/]" if shown else ""


@contextmanager
def _progress(what: str, as_json: bool) -> Iterator[Callable[[int, int], None]]:
    """Yield a (done, total) callback that drives a rich progress bar on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), console=errors, disable=as_json
    ) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@command("train")
def train_cmd(project_dir: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Train the model on the labeled crops of the pool (warm start from the newest model).

    Example: [bold]activeseg train --json[/]
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from activeseg.workflows.fit import train_project
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    columns = (
        TextColumn("training"),
        BarColumn(),
        TextColumn("{task.fields[loss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=errors, disable=as_json) as bar:
        task = bar.add_task("train", total=project.config.train.steps, loss="")
        checkpoint = train_project(
            project,
            progress=lambda step, total, loss: bar.update(
                task, completed=step, loss=f"loss {loss:.3f}"
            ),
        )
    result = {
        "checkpoint": str(project.resolve(checkpoint.path)),
        "steps": checkpoint.steps,
        "labeled_crops": checkpoint.labeled_crops,
        "kind": checkpoint.kind,
    }
    if as_json:
        emit_json(result)
    else:
        console.print(
            f"trained {result['steps']} steps on {result['labeled_crops']} crops → "
            f"{result['checkpoint']}"
        )


@command("predict")
def predict_cmd(
    volume: Annotated[str, typer.Argument(help="A registered volume's name or a zarr path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output zarr group.")],
    samples: Annotated[
        str,
        typer.Option(
            help="Keep per-sample outputs ('samples'), or mean/variance "
            "('moments'), or decide by size ('auto')."
        ),
    ] = "auto",
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Predict a volume with the newest model: foreground, embeddings and consensus instances.

    Example: [bold]activeseg predict val0 --out val0-pred.zarr[/]
    """
    from activeseg.workflows.predict import predict_volume
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    with console.status(f"predicting {volume}"):
        result = predict_volume(project, volume, out, layout=samples)
    if as_json:
        emit_json(result)
    else:
        console.print(
            f"wrote {result['out']} ({result['layout']}, {result['instances']} instances)"
        )


@command("round")
def round_cmd(
    until: Annotated[
        str | None,
        typer.Option(help="Stop after this stage (ingest, train, evaluate, score, select, push)."),
    ] = None,
    strategy: Annotated[
        str | None, typer.Option(help="random, diverse, uncertainty, bald or instance.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Crops to push.")] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run one round of the loop: ingest → train → evaluate → score → select → push.

    An interrupted round resumes at its first unfinished stage.

    Example: [bold]activeseg round --strategy instance --batch-size 8[/]
    """
    from activeseg.workflows.history import round_detail
    from activeseg.workflows.loop import run_round
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    if not as_json:
        console.print("[bold]round[/]")
    info = run_round(
        project,
        until=until,
        strategy=strategy,
        batch_size=batch_size,
        events=_stage_printer(as_json),
    )
    detail = round_detail(project, info.number)
    detail.pop("config")
    if as_json:
        emit_json(detail)
    else:
        console.print(f"round {info.number} {'finished' if info.finished_at else 'paused'}")


@command("history")
def history_cmd(
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write learning curves to this PNG.")
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the rounds: labels, strategy, training time, validation metrics, stage timings.

    Example: [bold]activeseg history --plot curves.png[/]
    """
    from activeseg.workflows.history import plot_history, round_history
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    history = round_history(project)
    if plot is not None:
        plot_history({project.root.name: history}, plot)
    if as_json:
        emit_json(history)
        return
    print_history(history)
    if plot is not None:
        console.print(f"learning curves: {plot}")


def print_history(history: list[dict[str, Any]]) -> None:
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
        title="rounds",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )

    def fmt(value: Any, digits: int = 2) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    for row in history:
        m = row["metrics"]
        table.add_row(
            str(row["round"]),
            row["strategy"],
            str(row["labeled_crops"]),
            str(row["crops_added"]),
            fmt(row["training_seconds"], 0),
            *(fmt(m.get(k)) for k in ("AP50", "avF1", "C", "S", "voxel_error_auroc")),
            fmt(row.get("correction_fraction")),
        )
    console.print(table)
    console.print(
        "[dim]crops: labeled so far; sec: training time; MI AUC: voxel-error AUROC of the "
        "uncertainty; fixed: share of shown voxels repainted in the pre-annotations[/]"
    )


@command("show")
def show_cmd(
    number: Annotated[int, typer.Argument(help="Round number.")],
    top: Annotated[int, typer.Option(min=1, help="How many ranked crops to show.")] = 10,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show what a round picked and why, its model checkpoint and its config snapshot.

    Example: [bold]activeseg show 2[/]
    """
    from activeseg.workflows.history import round_detail
    from activeseg.workflows.project import open_project

    detail = round_detail(open_project(project_dir), number, top)
    if as_json:
        emit_json(detail)
        return
    console.print(
        f"round {detail['round']}: strategy {detail['strategy']}, "
        f"batch {detail['batch_size']}, model {detail['checkpoint']}"
    )
    table = Table("rank", "crop", "volume", "origin", "score", "parts", "flagged", "slices")
    for pick in detail["top"]:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in pick["parts"].items() if isinstance(v, float))
        flagged = ", ".join(f"#{f['id']} {'/'.join(f['flags'])}" for f in pick["flagged"])
        table.add_row(
            str(pick["rank"]),
            str(pick["crop_id"]),
            pick["volume"],
            str(pick["origin"]),
            f"{pick['score']:.3f}",
            parts,
            flagged,
            str(pick["slices"] or ""),
            style="bold" if pick["selected"] else None,
        )
    console.print(table)
    console.print("[dim]config snapshot:[/]")
    console.print(detail["config"], highlight=False)


@command("simulate")
def simulate_cmd(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds to run.")] = 3,
    strategy: Annotated[
        list[str] | None, typer.Option(help="Strategy; repeat to compare several.")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per strategy.")] = 1,
    plot: Annotated[Path | None, typer.Option(help="Learning curves PNG.")] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run rounds with the simulated annotator (answers from hidden ground truth).

    Several strategies or seeds each run in a copy of the starting project under
    simulations/, so they start from identical conditions.

    Example: [bold]activeseg simulate --rounds 4 --strategy random --strategy instance --seeds 3[/]
    """
    from activeseg.workflows.history import plot_history
    from activeseg.workflows.project import open_project
    from activeseg.workflows.simulate import simulate

    project = open_project(project_dir)
    results = simulate(
        project,
        rounds,
        strategy or [project.config.acquisition.strategy],
        seeds,
        events=_stage_printer(as_json),
        round_done=None if as_json else lambda name, n: console.print(f"{name}: round {n} done"),
    )
    if plot is not None:
        plot_history(results, plot)
    if as_json:
        emit_json(results)
        return
    for name, history in results.items():
        console.print(f"[bold]{name}[/]")
        print_history(history)


@command("demo")
def demo_cmd(
    directory: Annotated[Path, typer.Argument(help="Where to put the demo project.")] = Path(
        "demo"
    ),
    rounds: Annotated[int, typer.Option(min=1, help="Rounds to run.")] = 3,
) -> None:
    """Run the whole loop on synthetic MCFO-like data with a simulated annotator.

    Example: [bold]activeseg demo demo --rounds 3[/]
    """
    from activeseg.workflows.simulate import run_demo

    console.print(f"[bold]activeseg demo[/] in {directory.resolve()}")
    result = run_demo(
        directory,
        rounds,
        events=_stage_printer(False),
        round_done=lambda _, n: console.print(f"[bold]round {n} done[/]"),
    )
    print_history(result.history)
    console.print(f"""
project:          {result.project}
learning curves:  {result.plot}
inspect:          activeseg status -p {directory}; activeseg show 1 -p {directory}
view in napari:   napari {result.project}/volumes/pool0.zarr (OME-Zarr; labels under labels/)
""")


labelstudio_app = typer.Typer(help="Run the Label Studio server.", no_args_is_help=True)
app.add_typer(labelstudio_app, name="labelstudio")


@command("serve", labelstudio_app)
def labelstudio_serve_cmd(
    port: Annotated[
        int | None, typer.Option(help="Port on 127.0.0.1 (default: a free one).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Server data directory (database, uploads).")
    ] = None,
) -> None:
    """Start Label Studio on 127.0.0.1 with a pre-created user and API token; block until stopped.

    The token is LABEL_STUDIO_API_KEY (user: LABEL_STUDIO_USERNAME / LABEL_STUDIO_PASSWORD).
    SIGTERM or Ctrl-C stops the server cleanly.

    Example: [bold]activeseg labelstudio serve --port 8080 --data-dir ls-data[/]
    """
    from activeseg.labelstudio.server import serve_forever

    serve_forever(port, data_dir)


@command("annotate", labelstudio_app)
def labelstudio_annotate_cmd(
    project_dir: ProjectOption = None, as_json: JsonOption = False
) -> None:
    """Answer the open Label Studio tasks from hidden ground truth, as an annotator would.

    The simulated annotator, through the real server: for every pushed task without an
    answer it draws the true neurons on the shown slices and submits them ("done"). Then
    `activeseg ingest` (or the next round) takes them in.

    Example: [bold]activeseg labelstudio annotate --json[/]
    """
    from activeseg.labelstudio.client import LabelStudioClient
    from activeseg.workflows.annotators import answer_in_labelstudio
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    client = LabelStudioClient.from_env()
    try:
        answered = answer_in_labelstudio(project, client)
    finally:
        client.close()
    if as_json:
        emit_json({"answered": answered})
    else:
        console.print(f"answered {answered} tasks in Label Studio")


@command("evaluate")
def evaluate_cmd(
    pred: Annotated[str, typer.Argument(help="Prediction: zarr path or registered volume.")],
    gt: Annotated[str, typer.Argument(help="Ground truth: zarr path or registered volume.")],
    fisbe: Annotated[
        bool, typer.Option("--fisbe", help="FISBe protocol: drop predictions ≤ 800 voxels.")
    ] = False,
    partly: Annotated[
        bool, typer.Option("--partly", help="GT labels only some neurons (FISBe partly).")
    ] = False,
    uncertainty: Annotated[
        bool, typer.Option("--uncertainty", help="Add PAvPU, error AUROC and ECE.")
    ] = False,
    reliability: Annotated[
        Path | None,
        typer.Option(help="With --uncertainty: draw the foreground reliability diagram (PNG)."),
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare a segmentation with ground truth: AP, FISBe avF1/C/S/FS/FM, VOI, ARAND.

    Example: [bold]activeseg evaluate pred.zarr val0 --fisbe --json[/]
    or [bold]activeseg evaluate pred.zarr val0 --uncertainty --reliability calib.png[/]
    """
    from activeseg.errors import ProjectNotFoundError
    from activeseg.workflows.evaluate import evaluate_files
    from activeseg.workflows.project import open_project

    try:
        project = open_project(project_dir)
    except ProjectNotFoundError:
        project = None
    cluster = project.config.cluster if project else None
    result = evaluate_files(
        pred,
        gt,
        project,
        fisbe=fisbe,
        partly=partly,
        uncertainty=uncertainty,
        cluster=cluster,
        reliability_plot=reliability,
    )
    if as_json:
        emit_json(result)
        return
    table = Table("metric", "value", title=f"{pred} vs {gt}")
    for key, value in result.items():
        if not isinstance(value, dict):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


@command("score")
def score_cmd(
    strategy: Annotated[
        str | None, typer.Option(help="random, diverse, uncertainty, bald or instance.")
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="How many ranked crops to print.")] = 10,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score the unlabeled pool crops and rank them (this round's stages up to select).

    Runs the open round (or a new one) through ingest, train, evaluate, score and select, all
    recorded, and prints the ranking with the parts of each score.

    Example: [bold]activeseg score --strategy bald --json[/]
    """
    from activeseg.pool import rounds as pool_rounds
    from activeseg.workflows.loop import run_round
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    info = run_round(project, until="select", strategy=strategy, events=_stage_printer(as_json))
    with project.session() as session:
        scores = pool_rounds.round_scores(session, info.id)
    ranking = [
        {
            "crop_id": s.crop_id,
            "rank": s.rank,
            "score": s.score,
            "selected": s.selected,
            **{k: v for k, v in s.parts.items() if k != "descriptor"},
        }
        for s in scores
    ]
    if as_json:
        emit_json(ranking)
        return
    table = Table(
        "rank",
        "crop",
        "score",
        "uncertainty",
        "bald",
        "instance",
        "flagged",
        title=f"round {info.number}: {info.strategy}",
    )
    for row in ranking[:top]:
        flagged = ", ".join(f"#{f['id']} {'/'.join(f['flags'])}" for f in row.get("flagged", []))
        table.add_row(
            str(row["rank"]),
            str(row["crop_id"]),
            f"{row['score']:.3f}",
            *(f"{row[k]:.3f}" if k in row else "–" for k in ("uncertainty", "bald", "instance")),
            flagged,
            style="bold" if row["selected"] else None,
        )
    console.print(table)


@command("push")
def push_cmd(
    limit: Annotated[
        int | None, typer.Option(min=1, help="Push at most this many crops (best first).")
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Push the newest round's selected crops to Label Studio, pre-annotated by the model.

    Needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (environment or .env). Safe to re-run:
    crops already pushed are not pushed twice.

    Example: [bold]activeseg push --limit 10 --json[/]
    """
    from activeseg.workflows.project import open_project
    from activeseg.workflows.push import latest_round, push_selected

    project = open_project(project_dir)
    newest = latest_round(project)
    with _progress("rendering crops", as_json) as progress:
        result = push_selected(project, newest, limit=limit, progress=progress)
    if as_json:
        emit_json(result.as_dict())
        return
    console.print(
        f"pushed {result.pushed} crops to Label Studio project {result.project_id}"
        + (f" ({result.recovered} recovered from an interrupted push)" if result.recovered else "")
    )


@command("ingest")
def ingest_cmd(
    from_file: Annotated[
        tuple[int, Path] | None,
        typer.Option(
            "--from-file",
            metavar="CROP LABELS.zarr",
            help="Ingest labels made in another tool for one crop instead of Label Studio.",
        ),
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take new and updated annotations from Label Studio into the pool (or one label file).

    Only what changed since the last ingest is read; ingesting twice changes nothing. A bad
    annotation is reported with its task and does not stop the others (exit code 2 if any).

    Example: [bold]activeseg ingest --json[/]

    Example: [bold]activeseg ingest --from-file 12 crop12.zarr[/]
    """
    from activeseg.workflows.ingest import IngestResult, ingest_annotations, ingest_file
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    if from_file is not None:
        crop_id, path = from_file
        result = IngestResult()
        outcome = ingest_file(project, crop_id, path)
        setattr(result, outcome, 1)
    else:
        result = ingest_annotations(project)
    counts = result.as_dict()
    if as_json:
        emit_json(counts)
    else:
        console.print(", ".join(f"{k} {v}" for k, v in counts.items() if k != "errors"))
        for message in result.errors:
            errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if result.errors:
        raise typer.Exit(2)
