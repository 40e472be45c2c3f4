"""Looking back: the history of rounds and one round in detail."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from activeseg.cli import app
from activeseg.cli.common import JsonOption, ProjectOption, command, console, emit_json
from activeseg.cli.render import print_check, print_history, print_round_detail


@command(app, "history")
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
        emit_json([row.as_dict() for row in history])
        return
    print_history(history)
    if plot is not None:
        console.print(f"learning curves: {plot}")


@command(app, "show")
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
        emit_json(detail.as_dict())
        return
    print_round_detail(detail)


@command(app, "check")
def check_cmd(
    repair: Annotated[
        bool, typer.Option("--repair", help="Fix what is safe: remove leftover partial writes.")
    ] = False,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check the ledger against the files, like git fsck (exit 0 consistent, 1 if not).

    Every file the ledger references exists and opens, every labeled crop has its labels, no
    stage is left running without a live round, no partial writes are left behind.

    Example: [bold]activeseg check --repair --json[/]
    """
    from activeseg.workflows.check import check_project
    from activeseg.workflows.project import open_project

    report = check_project(open_project(project_dir), repair=repair)
    if as_json:
        emit_json(report.as_dict())
    else:
        print_check(report)
    if not report.consistent:
        raise typer.Exit(1)


@command(app, "unlock")
def unlock_cmd(project_dir: ProjectOption = None, as_json: JsonOption = False) -> None:
    """Say which of the project's locks are held, by whom, and how to free them.

    Locks are released by the kernel when their holder exits (even on a crash), so there is
    nothing to remove by hand: a held lock means that process still runs. Exit 0 when none is
    held, 75 (try again later) when one is.

    Example: [bold]activeseg unlock --json[/]
    """
    from activeseg.errors import LockError
    from activeseg.workflows.locks import lock_states
    from activeseg.workflows.project import open_project

    states = lock_states(open_project(project_dir).root)
    held = [s for s in states if s.held]
    if as_json:
        emit_json([s.as_dict() for s in states])
    elif not held:
        console.print("no lock is held: nothing to unlock (a lock is freed when its holder exits)")
    else:
        for state in held:
            console.print(
                f"{state.name}: held by {state.holder or 'an unknown process'}; it is freed "
                f"when that process ends (let it finish, or stop it)"
            )
    if held:
        raise typer.Exit(LockError.exit_code)
