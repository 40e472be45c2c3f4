"""One round on one page: what it picked and why, the images its tasks showed (the model's
neurons and doubts), its metrics, the learning curves and the stopping signal where a round
records one. A self-contained HTML file: every image is inline, nothing to fetch."""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from skimage.segmentation import find_boundaries

from activeseg.data import ome
from activeseg.data.volumes import read_raw
from activeseg.durable import partial_name
from activeseg.errors import NotFoundError
from activeseg.labelstudio.render import (
    channel_limits,
    doubt_marks,
    overview_image,
    png_bytes,
    render_rgb,
)
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.history import Pick, RoundDetail, plot_history, round_detail, round_history
from activeseg.workflows.project import Project
from activeseg.workflows.push import DOUBT_VMAX
from activeseg.workflows.score import analysis_path, read_analysis

HEADLINE = ("AP50", "avF1", "C", "S", "voxel_error_auroc", "instance_error_auroc")
STYLE = """body{font-family:sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em}
th{background:#eee}.pick{display:flex;gap:1em;align-items:flex-start;margin:1.5em 0}
img{border:1px solid #888;max-width:100%}img.crop{image-rendering:pixelated}
.why{font-size:.9em}"""


def write_report(project: Project, number: int | None, out: Path) -> dict[str, Any]:
    """Write the HTML report of round ``number`` (the newest if None) to ``out``; return a
    summary (round, picks, images)."""
    with project.session() as session:
        rounds = pool_rounds.list_rounds(session)
    if not rounds:
        raise NotFoundError("the project has no rounds yet: run `activeseg round` first")
    number = rounds[-1].number if number is None else number
    detail = round_detail(project, number, top=10**6)
    picks = [p for p in detail.top if p.selected]
    sections = [
        _heading(project, detail),
        _metrics(detail),
        _curves(project),
        _stopping(detail),
        "<h2>Crops picked</h2>",
        *(_pick(project, detail.number, pick) for pick in picks),
    ]
    if not picks:
        sections.append("<p>This round picked no crop.</p>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>activeseg round "
            f"{detail.number}</title><style>{STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>")  # fmt: skip
    partial = partial_name(out)  # a reader never sees half a page (no ledger row points here)
    partial.write_text(page, encoding="utf-8")
    partial.replace(out)
    return {"out": str(out), "round": detail.number, "picked": len(picks),
            "images": page.count("<img")}  # fmt: skip


def _heading(project: Project, detail: RoundDetail) -> str:
    return (
        f"<h1>activeseg round {detail.number}</h1><p>project {html.escape(project.root.name)}"
        f" · strategy <b>{html.escape(detail.strategy)}</b> · batch {detail.batch_size}"
        f" · model {html.escape(str(detail.checkpoint or 'none yet'))}</p>"
    )


def _metrics(detail: RoundDetail) -> str:
    shown = {k: detail.metrics[k] for k in HEADLINE if isinstance(detail.metrics.get(k), float)}
    if not shown:
        return "<h2>Validation</h2><p>No validation metrics in this round.</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in shown)
    cells = "".join(f"<td>{v:.3f}</td>" for v in shown.values())
    return f"<h2>Validation</h2><table><tr>{head}</tr><tr>{cells}</tr></table>"


def _curves(project: Project) -> str:
    history = round_history(project)
    with tempfile.TemporaryDirectory() as folder:
        plot = plot_history({project.root.name: history}, Path(folder) / "curves.png")
        png = plot.read_bytes()
    return f"<h2>Learning curves</h2>{_img(png, 'learning curves')}"


def _stopping(detail: RoundDetail) -> str:
    """Return the stopping signal a round recorded (in its metrics or a stage's outputs)."""
    signal = detail.metrics.get("stopping")
    for stage in detail.stages:
        signal = signal or (stage.outputs or {}).get("stopping")
    if signal is None:
        return ""
    return f"<h2>Stopping signal</h2><pre>{html.escape(str(signal))}</pre>"


def _pick(project: Project, number: int, pick: Pick) -> str:
    why = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>"
        for k, v in pick.parts.items()
        if isinstance(v, int | float)
    )
    flags = "".join(f"<li>{html.escape(str(f))}</li>" for f in pick.flagged)
    slices = "" if pick.slices is None else f"<p>label slices {list(pick.slices)}"
    reason = (
        f" ({html.escape(pick.why_slices)})</p>" if pick.why_slices else "</p>" if slices else ""
    )
    images = "".join(_img(png, alt, "crop") for alt, png in _task_images(project, number, pick))
    return (
        f"<div class='pick'><div>{images}</div><div class='why'><h3>crop {pick.crop_id}"
        f" · rank {pick.rank} · score {pick.score:.4g}</h3><p>volume {html.escape(pick.volume)}"
        f" at {list(pick.origin)}</p><table><tr><th>why</th><th>value</th></tr>{why}</table>"
        f"{'<p>flagged neurons</p><ul>' + flags + '</ul>' if flags else ''}{slices}{reason}"
        f"</div></div>"
    )


def _task_images(project: Project, number: int, pick: Pick) -> list[tuple[str, bytes]]:
    """Return (alt text, PNG) of the crop as its task showed it: the overview with the doubt,
    and the first label slice with the model's neurons outlined and its doubts marked."""
    with project.session() as session:
        crop = pool_volumes.get_crop(session, pick.crop_id)
        volume = pool_volumes.get_volume(session, crop.volume_name)
    raw = read_raw(project.resolve(volume.path), crop.box)[:3]
    limits = channel_limits(raw)
    path = analysis_path(project, number, crop.id)
    doubt = read_analysis(path, "mutual_information") if path.exists() else None
    label_z = list(pick.slices or [raw.shape[1] // 2])
    overview = overview_image(raw, limits, label_z, label_z, crop.origin[0], doubt, DOUBT_VMAX)
    z = label_z[0]
    page = render_rgb(raw[:, z], limits)
    if doubt is not None:
        page = doubt_marks(page, doubt[z], DOUBT_VMAX)
        page = _outline(page, read_analysis(path, "consensus")[z])
    page = np.repeat(np.repeat(page, 4, axis=0), 4, axis=1)
    return [(f"crop {crop.id}: overview", png_bytes(overview)),
            (f"crop {crop.id}: slice {crop.origin[0] + z}", png_bytes(page))]  # fmt: skip


def _outline(rgb: npt.NDArray[np.uint8], labels: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """Return the page with each of the model's neurons outlined in its label colour."""
    out = rgb.copy()
    ids = [int(i) for i in np.unique(labels) if i]
    for entry in ome.label_colors(ids):
        edge = find_boundaries(labels == entry["label-value"], mode="inner")
        out[edge] = entry["rgba"][:3]
    return out


def _img(png: bytes, alt: str, kind: str = "plot") -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<p><img class='{kind}' alt='{html.escape(alt)}' "
            f"src='data:image/png;base64,{data}'></p>")  # fmt: skip
