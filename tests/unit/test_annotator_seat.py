"""The annotator's seat: pages in z, one numbering, doubts in the page, colours, the queue."""

from __future__ import annotations

import ast
import colorsys
import io
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from activeseg.core.uncertainty import InstanceRisk
from activeseg.data.ome import Placement
from activeseg.errors import AnnotationError
from activeseg.labelstudio.brush import instances_to_results
from activeseg.labelstudio.client import DEFAULT_VIEW_TITLE, default_view_data
from activeseg.labelstudio.labeling import (
    DATA_HUES,
    instance_color,
    offered_labels,
    status_result,
)
from activeseg.labelstudio.render import (
    BLACK,
    GREY,
    WHITE,
    doubt_marks,
    legend_bar,
    overview_image,
    page_tag,
    text_mask,
)
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import tasks as pool_tasks
from activeseg.pool.records import CropInfo
from activeseg.workflows.ingest import labels_from_results
from activeseg.workflows.loop import run_round
from activeseg.workflows.project import Project
from activeseg.workflows.push import (
    build_task,
    flagged_instances,
    napari_command,
    page_results,
    plan_pages,
    priority,
    start_page,
)
from activeseg.workflows.score import (
    CropAnalysis,
    PushPlan,
    analysis_path,
    apart_first,
    boxes_overlap,
    plan_slices,
    selected_crops,
    widen_selection,
    write_analysis,
)
from activeseg.workflows.simulate import create_demo_project


def crop(ident: int, volume: int, origin: tuple[int, int, int], size: int = 8) -> CropInfo:
    """Return a crop of a cube of ``size`` at ``origin``."""
    end = cast(tuple[int, int, int], tuple(o + size for o in origin))
    return CropInfo(ident, volume, f"v{volume}", "pool", origin, end, 0.1, "unlabeled", None, None)


# --- one numbering: the absolute z in each page's corner ---------------------------------


def test_page_tag_burns_the_absolute_z_into_the_corner_only() -> None:
    page = np.full((32, 32, 3), 90, np.uint8)
    tagged = page_tag(page, 107, labeled=True)
    text = text_mask("107")
    assert tagged.shape == page.shape
    # The digits sit at (1, 1) in black on a white box one pixel wider all around.
    corner = tagged[1 : 1 + text.shape[0], 1 : 1 + text.shape[1]]
    assert (corner[text] == BLACK).all() and (corner[~text] == WHITE).all()
    assert (tagged[8:] == 90).all() and (tagged[:, text.shape[1] + 2 :] == 90).all()
    context = page_tag(page, 107, labeled=False)
    assert (context[1 : 1 + text.shape[0], 1 : 1 + text.shape[1]][text] == GREY).all()
    assert not np.array_equal(context, tagged)


def test_text_mask_refuses_a_character_without_a_glyph() -> None:
    assert text_mask("z12").shape == (5, 4 * 3 - 1)
    with pytest.raises(ValueError, match="no glyph"):
        text_mask("z1%")


# --- one pager: doubts drawn into the page ------------------------------------------------


def test_doubt_marks_put_white_corners_outside_strong_places_and_grey_at_weak_ones() -> None:
    page = np.zeros((20, 20, 3), np.uint8)
    doubt = np.zeros((20, 20))
    doubt[5:8, 5:9] = 0.9  # strong: at or above half the scale
    doubt[14:16, 12:14] = 0.3  # weak: above the lower level only
    doubt[0, 19] = 0.9  # a single pixel: too small to mark
    marked = doubt_marks(page, doubt, vmax=1.0)
    assert (marked[4, 4] == WHITE).all() and (marked[8, 9] == WHITE).all()
    assert (marked[13, 11] == GREY).all() and (marked[16, 14] == GREY).all()
    # The unsure places themselves stay untouched; marks are grey levels, never a hue.
    assert not marked[5:8, 5:9].any() and not marked[14:16, 12:14].any()
    changed = marked.reshape(-1, 3)[marked.reshape(-1, 3).any(axis=1)]
    assert (changed == changed[:, :1]).all()
    assert not marked[0:2, 17:20].any()
    assert np.array_equal(doubt_marks(page, np.zeros((20, 20)), 1.0), page)


def test_doubt_marks_use_the_fixed_scale_not_the_crop_maximum() -> None:
    page = np.zeros((10, 10, 3), np.uint8)
    doubt = np.zeros((10, 10))
    doubt[4:6, 4:6] = 0.1  # the crop's maximum, yet low on the round's scale
    assert np.array_equal(doubt_marks(page, doubt, vmax=1.0), page)
    assert not np.array_equal(doubt_marks(page, doubt, vmax=0.2), page)


# --- the overview: projections, label z marked, doubt legend -------------------------------


def test_overview_marks_label_slices_and_adds_the_doubt_panel_and_legend() -> None:
    raw = np.random.default_rng(1).integers(0, 100, (3, 12, 16, 16)).astype(np.float64)
    limits = np.array([[0.0, 100.0]] * 3)
    plain = overview_image(raw, limits, [3, 9], list(range(0, 12)), 40)
    doubt = np.zeros((12, 16, 16))
    with_doubt = overview_image(raw, limits, [3, 9], list(range(0, 12)), 40, doubt, 0.5)
    assert plain.dtype == np.uint8 and plain.shape[1] >= 200
    assert with_doubt.shape[0] > plain.shape[0] and with_doubt.shape[1] == plain.shape[1]
    factor = plain.shape[1] // (16 + 1 + 4 * 2 + 2)
    side_top = (16 + 2) * factor  # the XZ panel starts below the XY one and its gap
    margin = (1 + 4 * 2 + 2) * factor
    tick = plain[side_top + 3 * factor, margin - factor]
    context_tick = plain[side_top + 5 * factor, margin - factor]
    assert (tick == WHITE).all() and (context_tick == GREY).all()


def test_legend_is_a_single_hue_ramp_from_zero_to_the_top() -> None:
    bar = legend_bar(40, 0.5)
    ramp = bar[0, :, 0].astype(int)
    assert ramp[0] == 0 and ramp[-1] == 255 and (np.diff(ramp) >= 0).all()
    assert (bar[:4, :, 0] == bar[:4, :, 1]).all() and (bar[:4, :, 1] == bar[:4, :, 2]).all()
    assert bar[5:10].any()  # the numbers under the ramp


# --- label colours and counts -----------------------------------------------------------


def test_instance_colours_keep_away_from_the_channels_hues_and_do_not_repeat_early() -> None:
    colours = [instance_color(i) for i in range(1, 19)]
    assert len(set(colours)) == 18
    for colour in colours:
        red, green, blue = (int(colour[k : k + 2], 16) / 255 for k in (1, 3, 5))
        hue = colorsys.rgb_to_hsv(red, green, blue)[0] * 360
        assert min(min(abs(hue - h), 360 - abs(hue - h)) for h in DATA_HUES) >= 25


def test_offered_labels_are_as_many_as_asked_in_order() -> None:
    labels = offered_labels(3)
    assert [label["value"] for label in labels] == ["n1", "n2", "n3"]
    assert labels[0]["background"] == instance_color(1)


def test_status_has_no_skip_of_its_own() -> None:
    with pytest.raises(ValueError, match="status"):
        status_result("skip")


# --- 3-D context: the pages ---------------------------------------------------------------


def test_pages_are_a_contiguous_block_opening_on_the_chosen_label_slice() -> None:
    pages = plan_pages(32, [8, 14, 20], first=14, context=3)
    assert pages[0] == 14
    assert sorted(pages) == list(range(5, 24))
    # From the first page up in z, then the slices below it, each run contiguous.
    assert pages == [*range(14, 24), *range(5, 14)]
    assert plan_pages(10, [1, 8], first=1, context=3) == [*range(1, 10), 0]
    with pytest.raises(ValueError, match="not one of the label slices"):
        plan_pages(10, [1, 8], first=2)


def test_start_page_is_the_label_slice_with_most_flagged_neurons() -> None:
    shown = np.zeros((3, 4, 4), np.uint32)
    shown[0, 0, 0] = 1
    shown[1, 0, 0], shown[1, 1, 1] = 2, 3
    shown[2, 0, 0] = 2
    assert start_page(shown, [5, 9, 12], flagged={2, 3}) == 9
    assert start_page(shown, [5, 9, 12], flagged=set()) == 5


def test_page_results_move_regions_onto_their_pages_with_absolute_z_ids() -> None:
    drawn = np.zeros((2, 4, 4), np.uint32)
    drawn[0, :2] = 1
    drawn[1, 2:] = 2
    moved = page_results(instances_to_results(drawn), [3, 7], [7, 8, 2, 3], z_origin=100)
    assert [(r["item_index"], r["id"]) for r in moved] == [(3, "z103-n1"), (0, "z107-n2")]


def test_flags_name_the_pages_they_concern() -> None:
    risks = [{"id": 9, "flags": ["merge"]}, {"id": 4, "flags": []}]
    notes = flagged_instances(risks, {9: 1, 4: 2}, {1: [26, 28]})
    assert notes == ["n1 (z 26, 28): may be merged (several neurons)"]


def test_ingest_keeps_label_pages_and_drops_context_pages() -> None:
    pages, slices = [5, 6, 2, 3, 4], [2, 5]
    drawn = np.zeros((5, 4, 4), np.uint32)
    drawn[0, 0] = 1  # label page z=5
    drawn[1, 1] = 1  # context z=6: not kept
    drawn[2, 2] = 2  # label page z=2
    results = [*instances_to_results(drawn), status_result("done")]
    labels = labels_from_results(results, slices, (8, 4, 4), task=1, allow_empty=False, pages=pages)
    assert labels.mask.any(axis=(1, 2)).nonzero()[0].tolist() == [2, 5]
    assert (labels.labels[5, 0] == 1).all() and (labels.labels[2, 2] == 2).all()
    assert not labels.labels[6].any()
    only_context = instances_to_results(drawn[[0, 1]] * np.array([0, 1])[:, None, None])
    with pytest.raises(AnnotationError, match="no brush region on a label slice"):
        labels_from_results(only_context, slices, (8, 4, 4), task=1, allow_empty=False, pages=pages)


def test_napari_command_is_one_shell_line_of_valid_python_at_the_task_z() -> None:
    info = crop(1, 1, (10, 40, 5), size=16)
    line = napari_command(Path("/data/my vol.zarr"), info, 17, Path("/p/crop-1.zarr"))
    program, flag, code = shlex.split(line)
    assert (program, flag) == ("python", "-c")
    ast.parse(code)
    assert '"/data/my vol.zarr/0"' in code and "[:, 10:26, 24:72, 0:37]" in code
    assert line.startswith("python -c 'import napari") and "'\"'\"'" not in line
    assert "translate=(10, 24, 0)" in code and "set_point(0, 17)" in code
    assert '"/p/crop-1.zarr/consensus"' in code


def test_priority_is_in_zero_one_and_falls_with_rank() -> None:
    values = [priority(rank, 40, 101.04) for rank in range(40)]
    assert values[0] == 1.0 and all(0 < v <= 1 for v in values)
    assert values == sorted(values, reverse=True)
    assert 0 <= priority(None, 0, 101.04) < 1 and priority(None, 0, -3.0) == 0.0


# --- the queue ----------------------------------------------------------------------------


def test_default_view_sorts_by_prediction_score_and_hides_the_images() -> None:
    data = default_view_data(["images", "overview"])
    assert data["title"] == DEFAULT_VIEW_TITLE
    assert data["ordering"] == ["-tasks:predictions_score"]
    hidden = data["hiddenColumns"]["explore"]
    assert {"tasks:data.images", "tasks:data.overview"} <= set(hidden)
    assert "tasks:predictions_score" not in hidden


def test_overlapping_crops_of_one_volume_move_behind_the_batch() -> None:
    crops = {
        1: crop(1, 1, (0, 0, 0)),
        2: crop(2, 1, (4, 4, 4)),  # overlaps 1
        3: crop(3, 2, (0, 0, 0)),  # same place, other volume
        4: crop(4, 1, (8, 0, 0)),  # touches 1 without sharing a voxel
    }
    assert apart_first([1, 2, 3, 4], crops) == [1, 3, 4, 2]


def test_the_grid_keeps_what_comparing_every_pair_keeps() -> None:
    def every_pair(ranking: list[int], crops: dict[int, CropInfo]) -> list[int]:
        kept: list[int] = []
        for c in ranking:
            if not any(boxes_overlap(crops[c], crops[k]) for k in kept):
                kept.append(c)
        return kept + [c for c in ranking if c not in kept]

    rng = np.random.default_rng(0)
    for _ in range(50):
        crops = {
            i: crop(i, int(rng.integers(2)), tuple(int(v) for v in rng.integers(0, 40, 3)),  # type: ignore[arg-type]
                    int(rng.integers(3, 12)))
            for i in range(60)
        }  # fmt: skip
        ranking = [int(i) for i in rng.permutation(60)]
        assert apart_first(ranking, crops) == every_pair(ranking, crops)


def test_label_slices_avoid_the_crop_edges(tmp_path: Path) -> None:
    project = SimpleNamespace(
        config=SimpleNamespace(labelstudio=SimpleNamespace(slices=2)), predictions_dir=tmp_path
    )
    info = crop(3, 1, (0, 0, 0), size=8)
    mi = np.zeros((8, 8, 8), np.float32)
    mi[0], mi[7], mi[3], mi[5] = 1.0, 0.9, 0.5, 0.4
    write_analysis(analysis_path(cast(Project, project), 1, 3), fake_analysis(mi), Placement())
    slices, _ = plan_slices(cast(Project, project), 1, info)
    assert slices == [3, 5]


def fake_analysis(mi: np.ndarray, consensus: np.ndarray | None = None) -> CropAnalysis:
    """Return a crop analysis with the given uncertainty (and consensus) and flat rest."""
    zeros = np.zeros(mi.shape, np.float32)
    labels = np.zeros(mi.shape, np.uint32) if consensus is None else consensus
    risks = [InstanceRisk(2, int((labels == 2).sum()), 0.3, 0.8, 0.1, 0.7, frozenset({"split"}))]
    return CropAnalysis(
        consensus=labels,
        samples=labels[None],
        foreground=zeros,
        entropy=zeros,
        mutual_information=mi.astype(np.float32),
        risks=risks if consensus is not None else [],
        descriptor=np.zeros(4, np.float32),
    )


# --- a whole task, built from a project ----------------------------------------------------


@pytest.fixture(scope="module")
def selected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, Any, CropInfo]:
    """Return a smoke project whose round 0 is scored and selected, its round and a crop."""
    project = create_demo_project(tmp_path_factory.mktemp("seat") / "project", "smoke")
    info = run_round(project, until="select")
    return project, info, selected_crops(project, info.id)[0]


def test_round_zero_task_has_pages_labels_overview_and_no_doubts(
    selected: tuple[Project, Any, CropInfo],
) -> None:
    project, info, first = selected
    task = build_task(project, info, first, 2.5, 0)
    z0 = first.origin[0]
    assert task.prediction is None
    assert set(task.slices) <= set(task.pages) and len(task.pages) > len(task.slices)
    assert sorted(task.pages) == list(range(min(task.pages), max(task.pages) + 1))
    assert list(task.images) == [f"crop{first.id}_r0_z{z0 + z}.png" for z in task.pages]
    assert task.data["slices"] == [z0 + z for z in task.slices]
    assert len(task.data["labels"]) == 8 and task.data["priority"] == 1.0
    assert task.pushed["pages"] == task.pages
    assert f"set_point(0, {z0 + task.pages[0]})" in task.data["napari"]
    # The overview has no doubt panel without a model.
    view = Image.open(io.BytesIO(next(iter(task.overview.values()))))
    assert view.width >= 200
    with project.session() as session:
        ranked = pool_rounds.round_scores(session, info.id)
    assert f"rank 1 of {sum(s.rank is not None for s in ranked)}" in task.data["caption"]


def test_task_with_a_model_opens_on_the_flagged_page_with_its_regions(
    selected: tuple[Project, Any, CropInfo],
) -> None:
    project, info, first = selected
    depth = first.shape[0]
    mi = np.zeros(first.shape, np.float32)
    late, early = depth - 3, 2
    mi[late, 2:6, 2:6], mi[early, 2:6, 2:6] = 0.9, 0.8
    consensus = np.zeros(first.shape, np.uint32)
    consensus[early, :4, :4] = 1  # unflagged
    consensus[late, :4, :4] = 2  # flagged: split
    assert project.config.labelstudio.slices == 2
    path = analysis_path(project, info.number, first.id)
    write_analysis(path, fake_analysis(mi, consensus), Placement())
    try:
        task = build_task(project, info, first, 0.7, 3)
    finally:
        shutil.rmtree(path)
    z0 = first.origin[0]
    assert task.slices == [early, late]
    assert task.pages[0] == late  # the page with the flagged neuron comes first
    assert task.prediction is not None and 0 <= task.prediction["score"] <= 1
    # Equal sizes keep the model's order: model 1 is n1, the flagged model 2 is n2.
    by_id = {r["id"]: r["item_index"] for r in task.prediction["result"]}
    assert by_id == {f"z{z0 + late}-n2": 0, f"z{z0 + early}-n1": task.pages.index(early)}
    assert len(task.data["labels"]) == 2 + 4
    assert f"n2 (z {z0 + late}): may be split" in task.data["caption"]


# --- push --limit ----------------------------------------------------------------------------


@pytest.fixture
def round_zero(tmp_path: Path) -> tuple[Project, Any]:
    """Return a smoke project whose round 0 is scored and selected (batch of 2), and the round."""
    project = create_demo_project(tmp_path / "project", "smoke")
    return project, run_round(project, until="select")


def test_a_limit_beyond_the_batch_selects_the_next_ranked_crops(
    round_zero: tuple[Project, Any],
) -> None:
    project, info = round_zero
    before = [c.id for c in selected_crops(project, info.id)]
    plan = widen_selection(project, info.id, info.number, 3)
    after = [c.id for c in selected_crops(project, info.id)]
    assert (plan.waiting, plan.added, plan.shortfall) == (3, 1, None)
    assert after[:2] == before and len(after) == 3
    with project.session() as session:
        ranked = [s.crop_id for s in pool_rounds.round_scores(session, info.id)]
    assert after == ranked[:3]  # the top 3 of the ranking, in order
    # Asking again changes nothing.
    assert widen_selection(project, info.id, info.number, 3) == PushPlan(3, 0)


def test_fewer_than_asked_says_why_in_numbers(round_zero: tuple[Project, Any]) -> None:
    project, info = round_zero
    for chosen in selected_crops(project, info.id):
        with project.session() as session:
            pool_tasks.queue_crop(session, chosen.id, round_id=info.id, slices=[1], pushed={})
    with project.session() as session:
        ranked = sum(s.rank is not None for s in pool_rounds.round_scores(session, info.id))
    nothing = widen_selection(project, info.id, info.number, None)
    assert nothing.waiting == 0 and nothing.shortfall is not None
    assert f"ranked {ranked} crops (2 selected); 2 queued; {ranked - 2} still" in nothing.shortfall
    plan = widen_selection(project, info.id, info.number, ranked + 5)
    assert plan.waiting == ranked - 2 and plan.shortfall is not None
