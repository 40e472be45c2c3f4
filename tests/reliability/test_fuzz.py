"""Property-based fuzzing of what comes from outside: every input is either stored correctly
or refused with a named error, and a refusal leaves the project byte-identical."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from activeseg.data.volumes import read_crop_labels, read_raw
from activeseg.errors import ActivesegError, AnnotationError, InputError
from activeseg.labelstudio.brush import instances_to_results, results_to_instances
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.importing import import_volume
from activeseg.workflows.ingest import ingest_file, labels_from_results
from activeseg.workflows.locks import LOCK_DIR
from activeseg.workflows.project import Project, init_project

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text()
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _digest(root: Path) -> str:
    """Return a hash of the project's files; lock files are runtime state, not data."""
    h = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and LOCK_DIR not in p.parts)
    for path in sorted(files):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


def _mutated_result(data: st.DataObject) -> dict[str, Any]:
    """Return a valid brush result with some fields replaced by arbitrary JSON."""
    labels = np.zeros((2, 4, 5), np.uint32)
    labels[1, 1:3, 1:4] = 2
    result: dict[str, Any] = instances_to_results(labels)[0]
    for key in data.draw(
        st.sets(
            st.sampled_from(
                ["item_index", "original_width", "original_height", "type", "from_name", "value"]
            )
        )
    ):
        result[key] = data.draw(JSON)  # fmt: skip
    if isinstance(result.get("value"), dict) and data.draw(st.booleans()):
        result["value"]["brushlabels"] = [data.draw(st.text(max_size=12))]
    if isinstance(result.get("value"), dict) and data.draw(st.booleans()):
        rle = data.draw(st.lists(st.integers(-5, 300), max_size=80))
        result["value"]["rle"] = rle
    return result


@FUZZ
@given(data=st.data())
def test_brush_results_decode_or_raise_annotation_error(data: st.DataObject) -> None:
    results = [_mutated_result(data) for _ in range(data.draw(st.integers(1, 3)))]
    try:
        instances, has_regions = results_to_instances(results, 2, 4, 5, task=1)
    except AnnotationError:
        return
    assert instances.labels.shape == (2, 4, 5) and has_regions.shape == (2,)
    assert (instances.overlaps[:, 0] < 2).all()


@FUZZ
@given(label=st.text(max_size=14))
def test_any_brush_label_value_decodes_or_raises_annotation_error(label: str) -> None:
    labels = np.zeros((1, 3, 3), np.uint32)
    labels[0, 1, 1] = 1
    result = instances_to_results(labels)[0]
    result["value"]["brushlabels"] = [label]
    try:
        crop = labels_from_results([result], [0], (2, 3, 3), task=5, allow_empty=False)
    except AnnotationError:
        return
    assert label == f"n{int(label[1:])}" or label.startswith("n")
    assert crop.labels[0, 1, 1] == int(label[1:])


@pytest.fixture(scope="module")
def pool_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    project = init_project(tmp_path_factory.mktemp("fuzz") / "p", "smoke")
    raw = np.random.default_rng(0).integers(0, 400, (3, 16, 32, 32), dtype=np.uint16)
    raw[:, 4:9, 8:20, 8:20] += 3000
    source = tmp_path_factory.mktemp("src") / "v.zarr"
    zarr.open_group(source, mode="w").create_array("raw", data=raw)
    import_volume(project, source, "zarr")
    return project


LABEL_ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.int8, np.int64, np.uint64, np.float32, np.bool_, np.uint32]),
    shape=st.sampled_from([(16, 32, 32), (16, 32, 31), (1, 16, 32, 32)]),
)
RAW_ARRAYS = hnp.arrays(
    dtype=st.sampled_from(
        [np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_, np.complex64]
    ),
    shape=st.sampled_from([(3, 16, 32, 32), (16, 32, 32), (16, 32, 32, 2), (2, 0, 32, 32)]),
)


@FUZZ
@given(array=LABEL_ARRAYS, value=st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats()))
def test_from_file_arrays_are_stored_exactly_or_refused(
    pool_project: Project, tmp_path_factory: pytest.TempPathFactory, array: np.ndarray,
    value: int | float,
) -> None:  # fmt: skip
    with pool_project.session() as session:
        crop = pool_volumes.list_crops(session)[0]
    with contextlib.suppress(OverflowError, ValueError, TypeError):
        array.flat[0] = value
    source = tmp_path_factory.mktemp("file") / "labels.zarr"
    zarr.create_array(source, data=array)
    before = _digest(pool_project.root)
    try:
        ingest_file(pool_project, crop.id, source)
    except InputError:
        assert _digest(pool_project.root) == before
        return
    with pool_project.session() as session:
        stored = read_crop_labels(
            pool_project.resolve(str(pool_volumes.get_crop(session, crop.id).label_path))
        )
    assert np.array_equal(stored.labels.astype(np.int64), array.astype(np.int64))  # fmt: skip


@FUZZ
@given(raw=RAW_ARRAYS)
def test_import_files_are_stored_exactly_or_refused(
    tmp_path_factory: pytest.TempPathFactory, raw: np.ndarray
) -> None:
    work = tmp_path_factory.mktemp("import")
    project = init_project(work / "p", "smoke")
    source = work / "v.zarr"
    zarr.open_group(source, mode="w").create_array("raw", data=raw)
    before = _digest(project.root)
    try:
        imported = import_volume(project, source, "zarr")
    except ActivesegError as exc:
        assert exc.exit_code == 2
        assert _digest(project.root) == before
        return
    finally:
        shutil.rmtree(source)
    stored = read_raw(project.resolve(imported.volume.path))
    expected = raw if raw.ndim == 4 and raw.shape[0] <= 8 else (
        raw[None] if raw.ndim == 3 else np.moveaxis(raw, -1, 0))  # fmt: skip
    assert np.array_equal(stored, expected, equal_nan=False)
