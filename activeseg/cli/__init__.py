"""The `activeseg` command line: parse, open the project, call one library function, print.

The commands live in modules by group and register themselves on ``app`` when imported:
``setup`` (init, upgrade, synth, import, status), ``loop`` (round, train, score, push, ingest,
predict, evaluate, simulate, demo), ``inspect`` (history, show) and ``labelstudio`` (the
``labelstudio`` sub-commands). ``common`` holds the shared options, the ``command`` decorator
and JSON output; ``render`` all the tables.

Library errors (activeseg.errors) become one clean line on stderr and an exit code:
2 for bad input or usage, 1 for an internal failure.
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer

app = typer.Typer(
    name="activeseg",
    help="Active-learning annotation loop for 3-D neuron instance segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
labelstudio_app = typer.Typer(help="Run the Label Studio server.", no_args_is_help=True)


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


# The command modules register on app (in this order, the order of `activeseg --help`).
from activeseg.cli import setup, loop, inspect, labelstudio  # noqa: E402, F401, I001

app.add_typer(labelstudio_app, name="labelstudio")
