"""The `activeseg labelstudio` commands: run the server, answer its tasks as an annotator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from activeseg.cli import labelstudio_app
from activeseg.cli.common import JsonOption, ProjectOption, command, console, emit_json


@command(labelstudio_app, "serve")
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
    The server's log goes to the terminal (and to <data dir>/server.log). SIGTERM or Ctrl-C
    stops the server cleanly.

    Example: [bold]activeseg labelstudio serve --port 8080 --data-dir ls-data[/]
    """
    import sys

    from activeseg.labelstudio.server import serve_forever

    serve_forever(port, data_dir, echo=sys.stdout)


@command(labelstudio_app, "annotate")
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
    client = LabelStudioClient.from_env(project.root / ".env")
    try:
        answered = answer_in_labelstudio(project, client)
    finally:
        client.close()
    if as_json:
        emit_json({"answered": answered})
    else:
        console.print(f"answered {answered} tasks in Label Studio")
