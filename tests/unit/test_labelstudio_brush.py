"""Instance slices <-> Label Studio brush results, and the labeling config they must fit."""

from __future__ import annotations

import copy
import re
import time
import tracemalloc
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import encode_rle

from activeseg.errors import AnnotationError
from activeseg.labelstudio.brush import instances_to_results, results_to_instances
from activeseg.labelstudio.labeling import (
    BRUSH_NAME,
    IMAGE_NAME,
    LABELS_KEY,
    OVERVIEW_NAME,
    instance_id,
    labeling_config,
    task_status,
)


def decode(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels (N, H, W), has_regions) of brush results (overlaps are tested apart)."""
    instances, has_regions = results_to_instances(*args, **kwargs)
    return instances.labels, has_regions


def instance_slices() -> np.ndarray:
    """Return (3, 10, 12) uint32: two neurons crossing slices, an empty slice in the middle."""
    labels = np.zeros((3, 10, 12), dtype=np.uint32)
    labels[0, 1:4, 2:9] = 3
    labels[0, 6:8, :] = 7
    labels[2, 0:10, 5] = 3  # a one-pixel-wide neuron
    labels[2, 9, 11] = 12
    return labels


def test_results_have_one_region_per_instance_and_slice() -> None:
    results = instances_to_results(instance_slices())
    regions = sorted((r["item_index"], r["value"]["brushlabels"][0]) for r in results)
    assert regions == [(0, "n3"), (0, "n7"), (2, "n12"), (2, "n3")]
    first = results[0]
    assert first["type"] == "brushlabels"
    assert (first["from_name"], first["to_name"]) == (BRUSH_NAME, IMAGE_NAME)
    assert (first["original_width"], first["original_height"]) == (12, 10)
    assert first["value"]["format"] == "rle"
    assert len({r["id"] for r in results}) == len(results)


def test_rle_round_trip_is_exact() -> None:
    labels = instance_slices()
    decoded, has_regions = decode(instances_to_results(labels), 3, 10, 12)
    assert decoded.dtype == np.uint32
    np.testing.assert_array_equal(decoded, labels)
    np.testing.assert_array_equal(has_regions, [True, False, True])


def test_random_labels_round_trip() -> None:
    labels = np.random.default_rng(1).integers(0, 5, (2, 16, 16)).astype(np.uint32)
    decoded, _ = decode(instances_to_results(labels), 2, 16, 16)
    np.testing.assert_array_equal(decoded, labels)


def test_overlaps_round_trip_as_regions_sharing_voxels() -> None:
    labels = np.zeros((2, 8, 8), np.uint32)
    labels[0, 3, :] = 1  # neuron 1 runs along y = 3
    labels[0, :, 5] = 2  # neuron 2 along x = 5 ...
    labels[0, 3, 5] = 1  # ... crossing neuron 1 at (3, 5): both own it
    labels[1, 6, 1:3] = 3
    overlaps = np.array([[0, 3, 5, 2], [1, 6, 2, 4]])  # neuron 4 only as an overlap
    results = instances_to_results(labels, overlaps=overlaps)
    assert len(results) == 4  # (slice 0: 1, 2), (slice 1: 3, 4)
    back, _ = results_to_instances(results, 2, 8, 8)
    assert np.array_equal(back.labels, labels)
    assert sorted(map(tuple, back.overlaps.tolist())) == sorted(map(tuple, overlaps.tolist()))


def test_label_value_maps_to_instance_id() -> None:
    results = instances_to_results(instance_slices())
    for result in results:
        if result["value"]["brushlabels"] == ["n7"]:
            result["value"]["brushlabels"] = ["n42"]  # the annotator relabels the neuron
    decoded, _ = decode(results, 3, 10, 12)
    assert set(np.unique(decoded[0])) == {0, 3, 42}
    assert (decoded == 7).sum() == 0


def anti_aliased_result(alpha: np.ndarray, label: str = "n1") -> dict[str, Any]:
    """Return a brush result as the web page draws it: alpha 0..255, colour in RGB."""
    height, width = alpha.shape
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = alpha
    return {
        "from_name": BRUSH_NAME,
        "to_name": IMAGE_NAME,
        "type": "brushlabels",
        "item_index": 0,
        "original_width": width,
        "original_height": height,
        "value": {"format": "rle", "rle": encode_rle(rgba.ravel()), "brushlabels": [label]},
    }


def test_anti_aliased_strokes_are_thresholded() -> None:
    alpha = np.array([[0, 40, 127, 128, 200, 255]], dtype=np.uint8)
    decoded, _ = decode([anti_aliased_result(alpha)], 1, 1, 6)
    np.testing.assert_array_equal(decoded[0, 0], [0, 0, 0, 1, 1, 1])
    strict, _ = decode([anti_aliased_result(alpha)], 1, 1, 6, threshold=250)
    np.testing.assert_array_equal(strict[0, 0], [0, 0, 0, 0, 0, 1])


def test_other_controls_are_ignored() -> None:
    choice = {"from_name": "status", "to_name": IMAGE_NAME, "type": "choices", "value": {}}
    decoded, has_regions = decode([choice], 2, 4, 4)
    assert decoded.max() == 0
    assert not has_regions.any()


def one_result() -> dict[str, Any]:
    labels = np.zeros((1, 4, 5), dtype=np.uint32)
    labels[0, 1:3, 1:4] = 2
    return instances_to_results(labels)[0]


def broken(change: str) -> dict[str, Any]:
    """Return a valid result with one thing broken."""
    result = copy.deepcopy(one_result())
    if change == "label":
        result["value"]["brushlabels"] = ["axon"]
    elif change == "no label":
        result["value"]["brushlabels"] = []
    elif change == "two labels":
        result["value"]["brushlabels"] = ["n1", "n2"]
    elif change == "slice":
        result["item_index"] = 4
    elif change == "no slice":
        del result["item_index"]
    elif change == "rle":
        result["value"]["rle"] = result["value"]["rle"][:8]
    elif change == "short rle":
        result["value"]["rle"] = result["value"]["rle"][:6]
    elif change == "rle bytes":
        result["value"]["rle"] = [*result["value"]["rle"][:-1], 256]
    elif change == "no rle":
        del result["value"]["rle"]
    elif change == "stated size":
        result["original_width"] = 50
    elif change == "rle size":
        result["value"]["rle"] = instances_to_results(np.ones((1, 3, 3), np.uint32))[0]["value"][
            "rle"
        ]
    elif change == "type":
        result["type"] = "polygonlabels"
    return result


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("label", "'axon' is not an instance label"),
        ("no label", "exactly one label"),
        ("two labels", "exactly one label"),
        ("slice", r"item_index=4, but only 2 slices"),
        ("no slice", r"item_index=None"),
        ("rle", "cannot be decoded"),
        ("short rle", "brush RLE has 6 bytes, a 4x5 slice needs 7 to"),
        ("rle bytes", "list of bytes"),
        ("no rle", "no RLE"),
        ("stated size", "drawn on a 4x50 image"),
        ("rle size", "holds 9 pixels"),
        ("type", "expected a brush region"),
    ],
)
def test_bad_results_raise_annotation_error_naming_the_task(change: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=message) as caught:
        decode([broken(change)], 2, 4, 5, task=77)
    assert "task 77" in str(caught.value)


def test_a_valid_result_passes_the_same_checks() -> None:
    decoded, _ = decode([one_result()], 2, 4, 5, task=77)
    assert (decoded == 2).sum() == 6


def test_instances_to_results_rejects_non_integer_labels() -> None:
    with pytest.raises(ValueError, match="integers"):
        instances_to_results(np.zeros((1, 2, 2), dtype=np.float32))


def test_labeling_config_pages_one_image_with_dynamic_labels_and_a_required_status() -> None:
    root = ET.fromstring(labeling_config())
    images = {
        tag.get("name"): tag.get("valueList") or tag.get("value") for tag in root.iter("Image")
    }
    # One paged image to paint on, and the overview (a list of one image: no second pager).
    assert images == {IMAGE_NAME: "$images", OVERVIEW_NAME: "$overview"}
    # Label Studio's file upload needs at most one data key read through `value`.
    assert [t.get("value") for t in root.iter() if t.get("name") and t.get("value")] == ["$labels"]
    brush = root.find(".//BrushLabels")
    assert brush is not None
    assert (brush.get("name"), brush.get("toName")) == (BRUSH_NAME, IMAGE_NAME)
    assert brush.get("value") == f"${LABELS_KEY}"
    assert not list(brush.iter("Label"))  # the task lists its own labels
    status = root.find(".//Choices")
    assert status is not None
    assert (status.get("choice"), status.get("required")) == ("single-radio", "true")
    assert [choice.get("value") for choice in root.iter("Choice")] == ["done", "unsure"]


def test_instance_id_parses_label_values() -> None:
    assert instance_id("n17") == 17
    for bad in ("n0", "n", "17", "N3", "n-1"):
        with pytest.raises(AnnotationError):
            instance_id(bad)


def test_task_status_reads_the_choice() -> None:
    results = [
        one_result(),
        {"from_name": "status", "type": "choices", "value": {"choices": ["unsure"]}},
    ]
    assert task_status(results) == "unsure"
    assert task_status([one_result()]) is None


def crafted_rle(count: int, length: int) -> list[int]:
    """Return ``length`` RLE bytes whose header claims ``count`` values of 8 bits (then zeros)."""
    header = (count << 8) | (7 << 3)  # 32-bit count, 5-bit word size - 1, then run sizes
    return [*header.to_bytes(5, "big"), *[0] * (length - 5)]


def crafted_result(rle: list[int]) -> dict[str, Any]:
    """Return a 32x32 brush region on slice 0 with the given RLE."""
    return {
        "id": "r1",
        "from_name": BRUSH_NAME,
        "to_name": IMAGE_NAME,
        "type": "brushlabels",
        "item_index": 0,
        "original_width": 32,
        "original_height": 32,
        "value": {"format": "rle", "rle": rle, "brushlabels": ["n1"]},
    }


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        # 51k bytes for a 32x32 slice: the decoder took 1.1 GB and 6.7 s before giving up.
        (crafted_rle(2**24, 51_000), "brush RLE has 51000 bytes, a 32x32 slice needs 7 to"),
        # A short list whose header claims 16 M values: allocated before the first byte is read.
        (crafted_rle(2**24, 40), "brush RLE holds 4194304 pixels .* the slice has 32x32 = 1024"),
    ],
)
def test_a_crafted_rle_is_refused_before_decoding(rle: list[int], message: str) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(AnnotationError) as caught:
            decode([crafted_result(rle)], 1, 32, 32, task=9)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**21, f"{peak} bytes allocated"
    assert elapsed < 0.5
    assert re.match(rf"task 9, result 'r1': {message}", str(caught.value))


def test_an_rle_of_the_right_size_still_decodes() -> None:
    mask = np.zeros((32, 32), bool)
    mask[3:9, 4:30] = True
    result = crafted_result(instances_to_results(mask[None].astype(np.uint32))[0]["value"]["rle"])
    labels, _ = decode([result], 1, 32, 32, task=9)
    assert np.array_equal(labels[0] == 1, mask)


@pytest.mark.parametrize("index", [False, True, 1.0, "0"])
def test_an_item_index_that_is_no_integer_is_an_annotation_error(index: object) -> None:
    # found by fuzzing: a JSON false passed as slice 0 (a bool is an int in Python)
    labels = np.zeros((2, 4, 5), np.uint32)
    labels[0, 1:3, 1:4] = 2
    result = instances_to_results(labels)[0]
    result["item_index"] = index
    with pytest.raises(AnnotationError, match="item_index"):
        results_to_instances([result], 2, 4, 5, task=3)
