"""The loop and its stages: round, train, score, push, ingest, predict, evaluate, simulate, demo."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from activeseg.choices import Samples, Stage, Strategy
from activeseg.cli import app
from activeseg.cli.common import (
    ForceOption,
    JsonOption,
    ProjectOption,
    StrategyOption,
    command,
    console,
    emit_json,
    print_error,
)
from activeseg.cli.render import (
    print_history,
    print_metrics,
    print_outlook,
    print_ranking,
    progress_bar,
    stage_printer,
    training_bar,
)
from activeseg.errors import InputError

if TYPE_CHECKING:
    from activeseg.workflows.project import Project

WorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=0,
        help="Run on a Dask LocalCluster of N worker processes here (0: in this process).",
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        metavar="tcp://HOST:8786",
        help="Run on a running Dask scheduler (default: the config's compute.scheduler).",
    ),
]
NprocOption = Annotated[
    int | None,
    typer.Option(
        "--nproc",
        min=1,
        help="Train on N processes, data-parallel (gloo on the CPU, NCCL on GPUs).",
    ),
]


def _open(
    project_dir: Path | None,
    workers: int | None = None,
    scheduler: str | None = None,
    nproc: int | None = None,
) -> Project:
    """Return the project, its compute section overridden by the command line."""
    from activeseg.workflows.distributed import with_compute
    from activeseg.workflows.project import open_project

    project = open_project(project_dir)
    return with_compute(project, workers=workers, scheduler=scheduler, train_processes=nproc)


@command(app, "round")
def round_cmd(
    until: Annotated[Stage | None, typer.Option(help="Stop after this stage.")] = None,
    strategy: StrategyOption = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Crops to push.")] = None,
    abandon: Annotated[
        bool, typer.Option("--abandon", help="Close the open round as abandoned (kept in history).")
    ] = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    nproc: NprocOption = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run one round of the loop: ingest → train → evaluate → score → select → push.

    An interrupted round resumes at its first unfinished stage, with the strategy and batch
    size it started with (--strategy or --batch-size that differ are refused: finish it, or
    close it with --abandon). Exit code 75 when another round holds the project: try later.
    --workers/--scheduler score on a Dask cluster, --nproc trains on several processes (see
    the README, Running on a cluster).

    Example: [bold]activeseg round --strategy instance --batch-size 8[/]
    or [bold]activeseg round --workers 2 --nproc 2[/]
    """
    from activeseg.workflows.history import round_detail
    from activeseg.workflows.loop import abandon_round, run_round

    project = _open(project_dir, workers, scheduler, nproc)
    if abandon:
        closed = abandon_round(project)
        if as_json:
            emit_json(round_detail(project, closed.number).as_dict(config=False))
        else:
            console.print(f"round {closed.number} abandoned (kept in the history)")
        return
    if not as_json:
        console.print("[bold]round[/]")
    info = run_round(
        project,
        until=until,
        strategy=strategy,
        batch_size=batch_size,
        events=stage_printer(),
    )
    if as_json:
        emit_json(round_detail(project, info.number).as_dict(config=False))
    else:
        console.print(f"round {info.number} {'finished' if info.finished_at else 'paused'}")
        from activeseg.workflows.history import round_history

        print_outlook(round_history(project)[-1])


@command(app, "train")
def train_cmd(
    nproc: NprocOption = None, project_dir: ProjectOption = None, as_json: JsonOption = False
) -> None:
    """Train the model on the labeled crops of the pool (warm start from the newest model).

    With --nproc N, N processes of this machine each train on 1/N of every batch
    (train.batch_size must divide by N); the result is that of one process.

    Example: [bold]activeseg train --json[/] or [bold]activeseg train --nproc 2[/]
    """
    from activeseg.workflows.fit import train_project

    project = _open(project_dir, nproc=nproc)
    with training_bar(project.config.train.steps) as progress:
        checkpoint = train_project(project, progress=progress)
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


@command(app, "score")
def score_cmd(
    strategy: StrategyOption = None,
    top: Annotated[int, typer.Option(min=1, help="How many ranked crops to print.")] = 10,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Score the unlabeled pool crops and rank them (this round's stages up to select).

    Runs the open round (or a new one) through ingest, train, evaluate, score and select, all
    recorded, and prints the ranking with the parts of each score.

    Example: [bold]activeseg score --strategy bald --json[/]
    or [bold]activeseg score --scheduler tcp://head-node:8786[/]
    """
    from activeseg.workflows.history import round_ranking
    from activeseg.workflows.loop import run_round

    project = _open(project_dir, workers, scheduler)
    info = run_round(project, until="select", strategy=strategy, events=stage_printer())
    ranking = round_ranking(project, info.number)
    if as_json:
        emit_json([crop.as_dict() for crop in ranking])
        return
    print_ranking(ranking[:top], title=f"round {info.number}: {info.strategy}")


@command(app, "push")
def push_cmd(
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Push the top N ranked crops (selecting more than the batch if needed); "
            "with --review, at most N review tasks.",
        ),
    ] = None,
    review: Annotated[
        bool,
        typer.Option(
            "--review",
            help="Push review tasks instead: each crop whose labels are marked unsure (or each "
            "--crop) shown again with its stored labels, overlaps painted in both neurons.",
        ),
    ] = False,
    crops: Annotated[
        list[int] | None,
        typer.Option(
            "--crop", metavar="ID", help="With --review: review this labeled crop (repeatable)."
        ),
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Push the newest round's selected crops to Label Studio, pre-annotated by the model.

    Needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY (environment or .env). Safe to re-run:
    crops already pushed are not pushed twice. With --limit N, the round's top N ranked
    crops not pushed yet go out, beyond the round's batch if N is larger; fewer only when the
    round has no more, and then it says why.

    With --review, every crop whose labels the annotator marked unsure (or each --crop) goes
    out again as a review task, pre-annotated with its stored labels, unless it has a task
    nobody answered yet; the answer, ingested, becomes the crop's labels.

    Example: [bold]activeseg push --limit 10 --json[/]; [bold]activeseg push --review --crop 7[/]
    """
    from activeseg.workflows.project import open_project
    from activeseg.workflows.push import latest_round, push_reviews, push_selected
    from activeseg.workflows.score import widen_selection

    if crops and not review:
        raise InputError("--crop names crops to review: add --review")
    project = open_project(project_dir)
    newest = latest_round(project)
    if review:
        with progress_bar("rendering crops") as progress:
            result = push_reviews(
                project, newest, crop_ids=crops or (), limit=limit, progress=progress
            )
        if as_json:
            emit_json(result.as_dict())
            return
        console.print(f"pushed {result.pushed} review tasks to Label Studio project "
                      f"{result.project_id}")  # fmt: skip
        return
    plan = widen_selection(project, newest.id, newest.number, limit)
    with progress_bar("rendering crops") as progress:
        result = push_selected(project, newest, limit=limit, progress=progress)
    if as_json:
        emit_json(
            result.as_dict() | {"added_to_selection": plan.added, "shortfall": plan.shortfall}
        )
        return
    console.print(
        f"pushed {result.pushed} crops to Label Studio project {result.project_id}"
        + (f" ({result.recovered} recovered from an interrupted push)" if result.recovered else "")
        + (f"; {plan.added} more selected for --limit" if plan.added else "")
    )
    if plan.shortfall:
        lead = f"fewer than the {limit} asked" if limit else "nothing to push"
        console.print(f"[yellow]{lead}[/]: {plan.shortfall}")


@command(app, "ingest")
def ingest_cmd(
    from_file: Annotated[
        tuple[int, Path] | None,
        typer.Option(
            "--from-file",
            metavar="CROP LABELS",
            help="Ingest labels made in another tool (a zarr, OME-Zarr labels or napari's "
            "label TIFF) for one crop instead of Label Studio.",
        ),
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Take new and updated annotations from Label Studio into the pool (or one label file).

    Only what changed since the last ingest is read; ingesting twice changes nothing. A bad
    annotation is reported with its task and does not stop the others (exit code 2 if any).

    Example: [bold]activeseg ingest --json[/]

    Example: [bold]activeseg ingest --from-file 12 crop12.tif[/]
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
            print_error(message)
    if result.errors:
        raise typer.Exit(2)


@command(app, "predict")
def predict_cmd(
    volume: Annotated[
        str, typer.Argument(help="A registered volume's name or a file (any importable format).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output zarr group.")],
    samples: Annotated[
        Samples,
        typer.Option(
            help="Keep per-sample outputs ('samples'), or mean/variance "
            "('moments'), or decide by size ('auto')."
        ),
    ] = Samples.AUTO,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="fisbe, zarr, tiff, hdf5 or activeseg (default: guess)."
        ),
    ] = None,
    raw_key: Annotated[
        str | None, typer.Option("--raw", help="Raw dataset inside a zarr/HDF5 file.")
    ] = None,
    force: ForceOption = False,
    workers: WorkersOption = None,
    scheduler: SchedulerOption = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Predict a volume with the newest model: foreground, embeddings, uncertainty and consensus
    instances (clustered block by block: memory does not grow with the volume).

    A non-empty --out is refused unless --force. With --workers or --scheduler the tiles are
    predicted on a Dask cluster, each written straight to --out (the same bits as here).

    Example: [bold]activeseg predict val0 --out val0-pred.zarr[/]
    or [bold]activeseg predict fisbe-volume.zarr --out pred.zarr --workers 2[/]
    """
    from activeseg.workflows.predict import predict_volume

    project = _open(project_dir, workers, scheduler)
    with progress_bar(f"predicting {volume}: tiles") as progress:
        result = predict_volume(
            project,
            volume,
            out,
            layout=samples,
            force=force,
            fmt=fmt,
            raw_key=raw_key,
            progress=progress,
        )
    if as_json:
        emit_json(result)
    else:
        console.print(
            f"wrote {result['out']} ({result['layout']}, {result['instances']} instances)"
        )


@command(app, "evaluate")
def evaluate_cmd(
    pred: Annotated[str, typer.Argument(help="Prediction: a labels file or registered volume.")],
    gt: Annotated[str, typer.Argument(help="Ground truth: a labels file or registered volume.")],
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
    curves: Annotated[
        Path | None,
        typer.Option(
            help="With --uncertainty: draw PAvPU, p(accurate|certain) and p(uncertain|"
            "inaccurate) over the uncertainty threshold (PNG)."
        ),
    ] = None,
    labels_key: Annotated[
        str | None,
        typer.Option("--labels", help="Ground-truth label dataset inside a zarr/HDF5 file."),
    ] = None,
    pred_labels_key: Annotated[
        str | None,
        typer.Option("--pred-labels", help="Predicted label dataset inside a zarr/HDF5 file."),
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Compare a segmentation with ground truth: AP, FISBe avF1/C/S/FS/FM, VOI, ARAND.

    Either may be a file that holds only labels: FISBe (volumes/gt_instances, with or without
    raw), a zarr array or group, a TIFF, or an HDF5 file (name the dataset with --labels).

    Example: [bold]activeseg evaluate pred.zarr val0 --fisbe --json[/]
    or [bold]activeseg evaluate pred.zarr val0 --uncertainty --curves pavpu.png[/]
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
        labels_key=labels_key,
        pred_labels_key=pred_labels_key,
        curves_plot=curves,
    )
    if as_json:
        emit_json(result)
        return
    print_metrics(result, title=f"{pred} vs {gt}")


@command(app, "simulate")
def simulate_cmd(
    rounds: Annotated[int, typer.Option(min=1, help="Rounds to run.")] = 3,
    strategy: Annotated[
        list[Strategy] | None, typer.Option(help="Strategy; repeat to compare several.")
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
        events=stage_printer(),
        round_done=None if as_json else lambda name, n: console.print(f"{name}: round {n} done"),
    )
    if plot is not None:
        plot_history(results, plot)
    if as_json:
        emit_json({name: [row.as_dict() for row in rows] for name, rows in results.items()})
        return
    for name, history in results.items():
        console.print(f"[bold]{name}[/]")
        print_history(history)


@command(app, "demo")
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
        events=stage_printer(),
        round_done=lambda _, n: console.print(f"[bold]round {n} done[/]"),
    )
    print_history(result.history)
    console.print(f"""
project:          {result.project}
learning curves:  {result.plot}
inspect:          activeseg status -p {directory}; activeseg show 1 -p {directory}
look at a round:  activeseg view -p {directory}   (napari: pip install 'activeseg\\[view]')
report:           activeseg report -p {directory} --out {directory}/report.html
""")
