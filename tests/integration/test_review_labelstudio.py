"""A review cycle through a real Label Studio server: an unsure annotation with an overlap is
pushed again with its stored labels, answered "done" and ingested."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from activeseg.data.volumes import read_crop_labels
from activeseg.labelstudio.brush import instances_to_results, results_to_instances
from activeseg.labelstudio.client import LabelStudioClient
from activeseg.labelstudio.labeling import status_result
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.check import check_project
from activeseg.workflows.fit import training_crops
from activeseg.workflows.ingest import ingest_annotations
from activeseg.workflows.loop import run_round
from activeseg.workflows.project import Project
from activeseg.workflows.push import latest_round, push_reviews, push_selected

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_an_unsure_overlap_is_reviewed_in_labelstudio_and_trains_again(
    environment: None,
    ls_client: LabelStudioClient,
    tmp_path: Path,
    labelstudio_project: Callable[..., Project],
) -> None:
    project = labelstudio_project(tmp_path / "project")
    run_round(project, until="select")
    pushed = push_selected(project, latest_round(project))
    with project.session() as session:
        first = pool_tasks.task_by_ls_id(session, pushed.tasks[0])
    assert first is not None
    pages = first.pushed["pages"]
    drawn = np.zeros((len(pages), 32, 32), np.uint32)
    drawn[:, 4:8, :] = 1
    drawn[:, 10:30, 12:15] = 2
    crossing = np.array([(pages.index(z), y, x, 2) for z in first.slices
                         for y in range(4, 8) for x in range(12, 15)])  # fmt: skip
    regions = instances_to_results(drawn, overlaps=crossing)
    ls_client.create_annotation(pushed.tasks[0], [*regions, status_result("unsure")])
    assert ingest_annotations(project).ingested == 1
    with project.session() as session:
        unsure = pool_volumes.get_crop(session, first.crop_id)
        assert pool_tasks.unsure_crop_ids(session) == {first.crop_id}
    before = read_crop_labels(project.resolve(str(unsure.label_path)))
    assert len(before.overlaps) == len(first.slices) * 12

    review = push_reviews(project, latest_round(project))
    assert review.pushed == 1
    remote = ls_client.get_task(review.tasks[0])
    assert remote["data"]["review"] is True
    assert remote["data"]["caption"].startswith(f"Review of crop {first.crop_id}, labelled")
    (prediction,) = remote["predictions"]
    assert prediction["model_version"] == "stored labels"
    shown_pages = len(remote["data"]["images"])
    shown, _ = results_to_instances(prediction["result"], shown_pages, 32, 32)
    assert len(shown.overlaps) == len(before.overlaps)
    # On a label page, the regions of n1 and n2 share the crossing voxels.
    page = int(shown.overlaps[0, 0])
    n1 = (shown.labels[page] == 1) | _extra(shown.overlaps, page, 1)
    n2 = (shown.labels[page] == 2) | _extra(shown.overlaps, page, 2)
    assert (n1 & n2).sum() == 12
    assert push_reviews(project, latest_round(project)).pushed == 0  # open: not twice

    # The reviewer adds a neuron the first annotator missed and says "done".
    added = np.zeros((shown_pages, 32, 32), np.uint32)
    added[page, 20:24, 20:30] = 3
    answer = [*prediction["result"], *instances_to_results(added)[:1], status_result("done")]
    ls_client.create_annotation(review.tasks[0], answer)
    assert ingest_annotations(project).ingested == 1
    with project.session() as session:
        crop = pool_volumes.get_crop(session, first.crop_id)
        current = pool_tasks.labels_annotation(session, first.crop_id)
        assert pool_tasks.unsure_crop_ids(session) == set()
    assert current is not None and current.status == "done"
    assert crop.status == "labeled" and crop.label_path != unsure.label_path
    after = read_crop_labels(project.resolve(str(crop.label_path)))
    assert {tuple(r) for r in after.overlaps.tolist()} == {
        tuple(r) for r in before.overlaps.tolist()
    }
    assert (after.labels == 3).sum() == 40
    assert f"crop {first.crop_id}" in [c.name for c in training_crops(project)]
    assert check_project(project).consistent


def _extra(rows: np.ndarray, page: int, ident: int) -> np.ndarray:
    """Return the (32, 32) mask of the overlap voxels of one neuron on one page."""
    mask = np.zeros((32, 32), bool)
    mine = rows[(rows[:, 0] == page) & (rows[:, 3] == ident)]
    mask[mine[:, 1], mine[:, 2]] = True
    return mask
