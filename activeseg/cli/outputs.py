"""Looking at results and handing them on: export (and view, report)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from activeseg.choices import ExportFormat
from activeseg.cli import app
from activeseg.cli.common import JsonOption, ProjectOption, command, console, emit_json
from activeseg.errors import InputError

if TYPE_CHECKING:
    from activeseg.workflows.project import Project


def _project_or_none(project_dir: Path | None) -> Project | None:
    """Return the project here (or at --project), or None outside one: files work anyway."""
    from activeseg.errors import ProjectNotFoundError
    from activeseg.workflows.project import open_project

    try:
        return open_project(project_dir)
    except ProjectNotFoundError:
        return None


@command(app, "export")
def export_cmd(
    labels: Annotated[
        str,
        typer.Argument(
            help="Labels: a prediction (pred.zarr), crop labels, a volume's name or a label file."
        ),
    ],
    to: Annotated[ExportFormat, typer.Option("--to", help="Where the labels go.")] = (
        ExportFormat.OME_ZARR
    ),
    image: Annotated[
        str | None,
        typer.Option(help="ome-zarr: the image to add them to (a volume's name or OME-Zarr)."),
    ] = None,
    name: Annotated[str, typer.Option(help="ome-zarr: the label image's name.")] = "activeseg",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="tiff: the file to write.")
    ] = None,
    labels_key: Annotated[
        str | None, typer.Option("--labels", help="The label dataset inside a zarr/HDF5 file.")
    ] = None,
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export labels: an OME-Zarr label image under their image, or an ImageJ TIFF.

    The OME-Zarr labels open over the image in napari or neuroglancer; the TIFF carries the
    voxel size for Fiji. Crop labels land on their crop: they carry their place in the volume.

    Example: [bold]activeseg export val0-pred.zarr --image val0 --name round3[/]
    or [bold]activeseg export val0-pred.zarr --to tiff --out val0-labels.tif[/]
    """
    from activeseg.workflows.export import export_into_image, export_tiff

    project = _project_or_none(project_dir)
    if to == ExportFormat.TIFF:
        if out is None:
            raise InputError("--to tiff needs --out FILE.tif")
        result = export_tiff(project, labels, out, labels_key)
        message = f"wrote {result['out']} ({result['instances']} instances)"
    else:
        if image is None:
            raise InputError("--to ome-zarr needs --image (a volume's name or an OME-Zarr image)")
        result = export_into_image(project, labels, image, name, labels_key)
        message = f"added {result['labels']} to {result['image']} ({result['instances']} instances)"
    if as_json:
        emit_json(result)
    else:
        console.print(message)


@command(app, "view")
def view_cmd(
    target: Annotated[
        str | None,
        typer.Argument(help="A round number, a volume's name or a prediction (pred.zarr)."),
    ] = None,
    volume: Annotated[
        str | None, typer.Option(help="The volume to show (default: the one the target names).")
    ] = None,
    screenshot: Annotated[
        Path | None,
        typer.Option(help="Render without a window into this PNG (a virtual screen if needed)."),
    ] = None,
    project_dir: ProjectOption = None,
) -> None:
    """Look at a round in napari: raw in colour, the model's neurons, doubts, picked crops.

    The raw's channels keep their colours (MCFO as red, green, blue); the model's neurons
    and its doubt (mutual information, a heat map) come from the round's predictions, the
    neurons it flagged as split or merged get a contour, and the crops the round picked a
    yellow box. Needs napari: [bold]pip install 'activeseg\\[view]'[/].

    Example: [bold]activeseg view 3[/]
    or [bold]activeseg view val0-pred.zarr --volume val0 --screenshot val0.png[/]
    """
    try:
        import napari  # noqa: F401
    except ImportError:
        raise InputError("activeseg view needs napari: pip install 'activeseg[view]'") from None
    from activeseg.workflows.view import prediction_scene, round_scene, show_scene

    project = _project_or_none(project_dir)
    if target is not None and Path(target).suffix == ".zarr" and Path(target).exists():
        scene = prediction_scene(project, Path(target), volume)
    elif project is None:
        raise InputError("outside a project, view takes a prediction (pred.zarr)")
    elif target is not None and target.isdigit():
        scene = round_scene(project, int(target), volume)
    else:
        scene = round_scene(project, None, volume or target)
    show_scene(scene, screenshot)
    if screenshot is not None:
        console.print(f"wrote {screenshot}")


@command(app, "report")
def report_cmd(
    number: Annotated[
        int | None, typer.Argument(help="Round number (default: the newest).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    project_dir: ProjectOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write one round as a self-contained HTML page: what it picked and why, with images.

    The page holds the task images of each picked crop (the model's neurons and doubts), the
    parts of its score, the validation metrics, the learning curves and the stopping signal
    where the round recorded one; all images are inline, so the file can be mailed.

    Example: [bold]activeseg report 3 --out round3.html[/]
    """
    from activeseg.workflows.project import open_project
    from activeseg.workflows.report import write_report

    result = write_report(open_project(project_dir), number, out)
    if as_json:
        emit_json(result)
    else:
        console.print(f"wrote {result['out']} (round {result['round']}, {result['picked']} crops)")
