"""Setting a project up: init, upgrade, synth, import and status."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from activeseg.choices import Format, Split
from activeseg.cli import app
from activeseg.cli.common import (
    ForceOption,
    JsonOption,
    ProjectOption,
    command,
    console,
    emit_json,
    errors,
)
from activeseg.cli.render import print_status


@command(app, "init")
def init_cmd(
    directory: Annotated[Path, typer.Argument(help="Directory of the new project.")],
    config: Annotated[
        str, typer.Option("--config", "-c", help="Config file or built-in name.")
    ] = "default",
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="PostgreSQL URL of an empty database for the ledger (default: SQLite pool.db). "
            "Stored in the project's ledger.url; a password in it goes to the project's .env.",
        ),
    ] = None,
) -> None:
    """Create a project: its config and a migrated pool database.

    Example: [bold]activeseg init myproject --config demo[/]

    Example: [bold]activeseg init myproject --database postgresql+psycopg://me@db.lab/fly1[/]
    """
    from activeseg.pool.db import describe
    from activeseg.workflows.project import init_project

    project = init_project(directory, config, database=database)
    console.print(
        f"created project in [bold]{project.root}[/] (ledger: {describe(project.engine.url)})"
    )


@command(app, "upgrade")
def upgrade_cmd(project_dir: ProjectOption = None) -> None:
    """Migrate the project's pool database to this version of activeseg.

    Example: [bold]activeseg upgrade -p myproject[/]
    """
    from activeseg.pool import db
    from activeseg.workflows.project import database_url, open_project

    project = open_project(project_dir, check=False)
    db.upgrade(database_url(project.root))
    console.print(
        f"pool database {db.describe(project.engine.url)} at revision {db.head_revision()}"
    )


@command(app, "synth")
def synth_cmd(
    out: Annotated[Path, typer.Argument(help="Output zarr (FISBe layout).")],
    shape: Annotated[tuple[int, int, int], typer.Option(help="Volume size Z Y X.")] = (
        32,
        128,
        128,
    ),
    neurons: Annotated[int, typer.Option(min=1, help="Number of neurons.")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same volume).")] = 0,
    force: ForceOption = False,
) -> None:
    """Write a synthetic MCFO-like volume with ground truth in the FISBe layout.

    A non-empty OUT is refused unless --force (which replaces only a zarr store, never a
    project's files).

    Example: [bold]activeseg synth vol0.zarr --shape 32 128 128 --neurons 8 --seed 0[/]
    """
    from activeseg.data.fisbe import write_fisbe
    from activeseg.data.synthetic import generate_mcfo

    volume = generate_mcfo(shape, neurons, seed)
    write_fisbe(out, volume.raw, volume.instances, force=force)
    console.print(f"wrote {out} ({len(volume.instances.ids())} neurons, shape {list(shape)})")


@command(app, "import")
def import_cmd(
    paths: Annotated[list[Path], typer.Argument(help="Files to import.")],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="The files' format.")] = (
        Format.FISBE
    ),
    split: Annotated[Split, typer.Option(help="What the volumes are for.")] = Split.POOL,
    as_labels: Annotated[
        bool, typer.Option("--as-labels", help="Use the file's labels for training.")
    ] = False,
    raw_key: Annotated[
        str | None, typer.Option("--raw", help="Raw dataset inside a zarr/HDF5 file.")
    ] = None,
    labels_key: Annotated[
        str | None,
        typer.Option(
            "--labels",
            help="Labels dataset (zarr/HDF5), label image under labels/ (OME-Zarr; default "
            "the first) or label file (TIFF).",
        ),
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
    with errors.status("importing") as status:
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
            imported.append(info.as_dict())
    if as_json:
        emit_json({"imported": imported})
        return
    for item in imported:
        console.print(
            f"imported [bold]{item['name']}[/] {item['shape']} into {item['split']}: "
            f"{item['crops']} crops" + (f" ({item['note']})" if item["note"] else "")
        )


@command(app, "status")
def status_cmd(project_dir: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Show the project's volumes, crops by split and status, and rounds.

    Example: [bold]activeseg status --json[/]
    """
    from activeseg.workflows.project import open_project
    from activeseg.workflows.status import project_status

    status = project_status(open_project(project_dir))
    if as_json:
        emit_json(status.as_dict())
        return
    print_status(status)
