"""Looking at a round in napari: the raw in its channel colours, the model's neurons, its
doubt as a heat map, the flagged neurons, and boxes around the crops the round picked.

:func:`round_scene` and :func:`prediction_scene` gather what to show as plain arrays and
numbers (a :class:`Scene`, testable without a screen); :func:`show_scene` hands it to napari,
which is an optional dependency (``pip install activeseg[view]``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.data.importers import ome_image
from activeseg.data.volumes import RAW_PATH
from activeseg.errors import InputError, NotFoundError
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import CropInfo, VolumeInfo
from activeseg.workflows.predict import CONSENSUS, resolve_volume
from activeseg.workflows.project import Project
from activeseg.workflows.score import analysis_path, read_analysis, read_instance_risks

DOUBT = "mutual_information"
DEFAULT_COLORS = ("FF0000", "00FF00", "0000FF", "FF00FF", "00FFFF", "FFFF00")


@dataclass(frozen=True)
class Channel:
    """One raw channel: its (Z, Y, X) data (lazy), colour (hex RGB) and display range."""

    data: Any
    color: str
    limits: tuple[float, float]


@dataclass
class Scene:
    """What a view shows, in voxels of one volume; ``scale`` is its voxel size in µm.

    instances, flagged: (Z, Y, X) uint32; doubt: (Z, Y, X) float32; boxes: (origin, end, text)
    of the picked crops.
    """

    title: str
    scale: tuple[float, float, float]
    channels: list[Channel] = field(default_factory=list)
    instances: npt.NDArray[np.uint32] | None = None
    flagged: npt.NDArray[np.uint32] | None = None
    doubt: npt.NDArray[np.float32] | None = None
    boxes: list[tuple[tuple[int, ...], tuple[int, ...], str]] = field(default_factory=list)

    def focus(self) -> int:
        """Return the z to open on: the middle of the first box, else of the volume."""
        if self.boxes:
            origin, end, _ = self.boxes[0]
            return (origin[0] + end[0]) // 2
        depth = self.channels[0].data.shape[0] if self.channels else 1
        return depth // 2


def raw_channels(path: Path) -> list[Channel]:
    """Return an OME-Zarr image's channels with their colours and windows (``omero``)."""
    group = zarr.open_group(str(path), mode="r")
    multiscale = ome_image(group)
    key = str(multiscale["datasets"][0]["path"]) if multiscale else RAW_PATH
    raw = cast(zarr.Array, group[key])
    omero = dict(cast(dict[str, Any], group.attrs.get("ome", {}))).get("omero", {})
    described = list(omero.get("channels", []))
    channels = []
    for c in range(raw.shape[0]):
        meta = described[c] if c < len(described) else {}
        window = meta.get("window", {})
        color = str(meta.get("color", DEFAULT_COLORS[c % len(DEFAULT_COLORS)]))
        limits = (float(window.get("start", 0.0)), float(window.get("end", 1.0)))
        channels.append(Channel(raw[c], color, limits))
    return channels


def round_scene(project: Project, number: int | None, volume: str | None = None) -> Scene:
    """Return the view of a round (the newest if None) on one volume: by default the volume
    holding most of the crops it picked."""
    with project.session() as session:
        rounds = pool_rounds.list_rounds(session)
        if not rounds:
            raise NotFoundError("the project has no rounds yet: run `activeseg round` first")
        info = rounds[-1] if number is None else pool_rounds.get_round(session, number)
        scores = pool_rounds.round_scores(session, info.id)
        crops = {s.crop_id: pool_volumes.get_crop(session, s.crop_id) for s in scores}
        volumes = {v.name: v for v in pool_volumes.list_volumes(session)}
    picked = [s for s in scores if s.selected]
    chosen = volume or _busiest_volume([crops[s.crop_id] for s in picked], volumes)
    if chosen not in volumes:
        raise NotFoundError(f"no volume named {chosen!r} in this project")
    target = volumes[chosen]
    scene = Scene(f"activeseg round {info.number}: {chosen}", target.voxel_size)
    scene.channels = raw_channels(project.resolve(target.path))
    on_volume = [s for s in scores if crops[s.crop_id].volume_id == target.id]
    _add_analyses(scene, project, info.number, [crops[s.crop_id] for s in on_volume], target)
    for s in picked:
        crop = crops[s.crop_id]
        if crop.volume_id == target.id:
            rank = "" if s.rank is None else f" #{s.rank + 1}"
            scene.boxes.append((crop.origin, crop.end, f"crop {crop.id}{rank}"))
    return scene


def _busiest_volume(picked: list[CropInfo], volumes: dict[str, VolumeInfo]) -> str:
    if picked:
        names = [c.volume_name for c in picked]
        return max(sorted(set(names)), key=names.count)
    pool = [v.name for v in volumes.values() if v.split == "pool"] or list(volumes)
    if not pool:
        raise NotFoundError("the project has no volumes")
    return pool[0]


def _add_analyses(
    scene: Scene, project: Project, number: int, crops: list[CropInfo], volume: VolumeInfo
) -> None:
    """Paste the round's crop analyses (neurons, doubt, flags) into volume-sized maps."""
    shape = volume.shape
    instances, flagged = np.zeros(shape, np.uint32), np.zeros(shape, np.uint32)
    doubt = np.zeros(shape, np.float32)
    offset, found = 0, False
    for crop in crops:
        path = analysis_path(project, number, crop.id)
        if not path.exists():
            continue
        found = True
        consensus = read_analysis(path, "consensus").astype(np.uint32)
        ids = np.where(consensus > 0, consensus + offset, 0).astype(np.uint32)
        instances[crop.box] = np.maximum(instances[crop.box], ids)
        doubt[crop.box] = np.maximum(doubt[crop.box], read_analysis(path, DOUBT))
        marked = [r["id"] for r in read_instance_risks(path) if r.get("flags")]
        flagged[crop.box] = np.maximum(flagged[crop.box], np.where(np.isin(consensus, marked),
                                                                   ids, 0))  # fmt: skip
        offset += int(consensus.max(initial=0))
    if found:
        scene.instances, scene.flagged, scene.doubt = instances, flagged, doubt


def prediction_scene(project: Project | None, path: Path, volume: str | None = None) -> Scene:
    """Return the view of an ``activeseg predict`` output: its neurons and doubt, over the raw
    of ``volume`` (a registered name or an OME-Zarr image) or the one it was predicted from."""
    group = zarr.open_group(str(path), mode="r")
    if CONSENSUS not in group:
        raise InputError(f"{path} is not an activeseg prediction (no {CONSENSUS})")
    multiscale = ome_image(group) or {}
    transforms = multiscale.get("datasets", [{}])[0].get("coordinateTransformations", [])
    scale = next((t["scale"] for t in transforms if t["type"] == "scale"), [1.0, 1.0, 1.0])
    scene = Scene(f"activeseg prediction {path.name}", (scale[0], scale[1], scale[2]))
    scene.instances = np.asarray(group[CONSENSUS][...], np.uint32)  # type: ignore[index]
    if DOUBT in group:
        scene.doubt = np.asarray(group[DOUBT][...], np.float32)  # type: ignore[index]
    source = volume or cast(str | None, group.attrs.get("source"))
    if source is not None:
        try:
            scene.channels = raw_channels(resolve_volume(project, source))
        except (InputError, NotFoundError, FileNotFoundError, KeyError):
            if volume is not None:
                raise
    return scene


def show_scene(
    scene: Scene, screenshot: Path | None = None, size: tuple[int, int] = (900, 700)
) -> None:
    """Open the scene in napari (blocks until the window closes), or with ``screenshot``
    render it without a screen into that PNG and return."""
    if screenshot is None:
        import napari

        _fill_viewer(scene, napari.Viewer(title=scene.title))
        napari.run()
        return
    with _virtual_display():
        import napari

        viewer = napari.Viewer(title=scene.title)
        _fill_viewer(scene, viewer)
        viewer.screenshot(str(screenshot), canvas_only=True, flash=False, size=size[::-1])
        viewer.close()


def _fill_viewer(scene: Scene, viewer: Any) -> None:
    from napari.utils import Colormap

    for index, channel in enumerate(scene.channels):
        rgb = [int(channel.color[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        colormap = Colormap([[0, 0, 0, 1], [*rgb, 1]], name=f"activeseg-{channel.color}")
        viewer.add_image(channel.data, name=f"raw {index}", colormap=colormap,
                         contrast_limits=channel.limits, blending="additive",
                         scale=scene.scale)  # fmt: skip
    if scene.doubt is not None:
        high = float(scene.doubt.max()) or 1.0
        viewer.add_image(scene.doubt, name="doubt (mutual information)", colormap="inferno",
                         blending="additive", opacity=0.6, contrast_limits=(0.0, high),
                         scale=scene.scale)  # fmt: skip
    if scene.instances is not None:
        viewer.add_labels(scene.instances, name="model's neurons", opacity=0.4, scale=scene.scale)
    if scene.flagged is not None and scene.flagged.any():
        flagged = viewer.add_labels(scene.flagged, name="flagged neurons", scale=scene.scale)
        flagged.contour = 2
    if scene.boxes:
        rectangles = [_rectangle(origin, end, z) for origin, end, _ in scene.boxes
                      for z in range(origin[0], end[0])]  # fmt: skip
        texts = [text for origin, end, text in scene.boxes for _ in range(origin[0], end[0])]
        viewer.add_shapes(rectangles, shape_type="rectangle", edge_color="yellow", edge_width=2,
                          face_color="transparent", name="picked crops", scale=scene.scale,
                          text={"string": "{label}", "color": "yellow", "size": 10},
                          features={"label": texts})  # fmt: skip
    viewer.reset_view()
    viewer.dims.set_point(0, scene.focus() * scene.scale[0])


def _rectangle(origin: tuple[int, ...], end: tuple[int, ...], z: int) -> npt.NDArray[np.float64]:
    (_, y0, x0), (_, y1, x1) = origin, end
    return np.array([[z, y0, x0], [z, y0, x1 - 1], [z, y1 - 1, x1 - 1], [z, y1 - 1, x0]], float)


@contextmanager
def _virtual_display() -> Iterator[None]:
    """Give Qt a screen to draw on without one: a private Xvfb (napari's canvas needs OpenGL,
    which Qt's "offscreen" platform does not offer here), or the display there is."""
    if os.environ.get("DISPLAY"):
        yield
        return
    if shutil.which("Xvfb") is None:
        raise InputError(
            "--screenshot without a display needs Xvfb (Debian: apt-get install xvfb "
            "libxcb-icccm4 libxcb-keysyms1); Qt's offscreen platform cannot draw napari"
        )
    read, write = os.pipe()
    server = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        display = pipe.readline().strip()
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ.update(DISPLAY=f":{display}", QT_QPA_PLATFORM="xcb")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(timeout=10)
