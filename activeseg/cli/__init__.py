"""The `activeseg` command line: parse, open the project, call one library function, print.

The commands live in modules by group and register themselves on ``app`` when imported:
``setup`` (init, upgrade, synth, import, status), ``loop`` (round, train, score, push, ingest,
predict, evaluate, simulate, demo), ``inspect`` (history, show, check), ``outputs`` (export,
view, report) and ``labelstudio`` (the ``labelstudio`` sub-commands); ``--help`` lists them
in groups (common.PANELS). ``common`` holds the shared options, the ``command`` decorator
and JSON output; ``render`` all the tables.

Library errors (activeseg.errors) become one clean line on stderr and an exit code:
2 for bad input or usage, 1 for an internal failure.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from activeseg.cli.common import LABEL_STUDIO

app = typer.Typer(
    name="activeseg",
    help="Active-learning annotation loop for 3-D neuron instance segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
labelstudio_app = typer.Typer(help="Run the Label Studio server.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        import activeseg

        typer.echo(f"activeseg {activeseg.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log what activeseg does (on stderr).")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Active-learning annotation loop for 3-D neuron instance segmentation.

    Start with [bold]activeseg init DIR[/], import volumes, then run [bold]activeseg round[/].
    """
    # Other libraries (Alembic, zarr) stay at warnings: -v is activeseg's own log.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("activeseg").setLevel(logging.INFO if verbose else logging.WARNING)


# The command modules register on app (in this order, the order of `activeseg --help`).
from activeseg.cli import setup, loop, inspect, labelstudio, outputs  # noqa: E402, F401, I001

# typer lists command groups after the commands, whatever the order here.
app.add_typer(labelstudio_app, name="labelstudio", rich_help_panel=LABEL_STUDIO)
