"""The `activeseg` command line: parse, load config, call one library function, print."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="activeseg",
    help="Active-learning annotation loop for 3-D neuron instance segmentation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Active-learning annotation loop for 3-D neuron instance segmentation."""
