"""What every command shares: the consoles, option types, error handling and JSON output."""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from activeseg.choices import Strategy
from activeseg.errors import ActivesegError

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
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace an existing output zarr (never a project's).")
]
StrategyOption = Annotated[
    Strategy | None,
    typer.Option(help="How to rank the crops (default: the config's).", show_choices=True),
]


SETUP, LOOP, LABEL_STUDIO, INSPECT = "Set up", "The loop", "Label Studio", "Inspection"
# The group each command is listed under in `activeseg --help` (groups in order of first use).
LOOP_COMMANDS = ("round", "train", "score", "push", "ingest", "predict", "evaluate", "simulate")
PANELS = {
    **dict.fromkeys(("init", "upgrade", "synth", "import", "status"), SETUP),
    **dict.fromkeys((*LOOP_COMMANDS, "demo"), LOOP),
    **dict.fromkeys(("history", "show", "check", "view", "report", "export"), INSPECT),
}


def command(group: typer.Typer, name: str) -> Callable[[F], F]:
    """Return a decorator registering a command that turns activeseg errors into an exit code.

    The error becomes one line on stderr; the exit code is the error's (2 for bad input).
    """

    def register(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except ActivesegError as exc:
                print_error(str(exc))
                raise typer.Exit(exc.exit_code) from None

        group.command(name, rich_help_panel=PANELS.get(name))(wrapper)
        return func

    return register


def print_error(message: str) -> None:
    """Print one error line on stderr."""
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def finite(data: Any) -> Any:
    """Return data with NaN and infinities as None (strict JSON has no NaN)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def emit_json(data: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n")
