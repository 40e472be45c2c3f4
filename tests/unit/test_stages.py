"""Stage outputs store the same JSON keys that projects have always stored."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from activeseg.config import NoiseConfig
from activeseg.errors import ConfigError
from activeseg.workflows import annotators
from activeseg.workflows.ingest import IngestResult
from activeseg.workflows.push import PushResult
from activeseg.workflows.stages import (
    CorrectionEffort,
    EvaluateOutput,
    IngestOutput,
    PushOutput,
    RoundContext,
    ScoreOutput,
    SelectOutput,
    TrainOutput,
)


def test_simulated_ingest_stores_its_correction_effort_even_when_unmeasured() -> None:
    unmeasured = IngestOutput(ingested=0, correction=CorrectionEffort())
    assert unmeasured.as_dict() == {
        "ingested": 0,
        "correction_voxels": None,
        "correction_fraction": None,
    }
    measured = IngestOutput(ingested=2, correction=CorrectionEffort(12.5, 0.25)).as_dict()
    assert measured == {"ingested": 2, "correction_voxels": 12.5, "correction_fraction": 0.25}


def test_each_stage_stores_the_keys_of_the_way_it_ended() -> None:
    assert TrainOutput(skipped="no labeled crops yet").as_dict() == {
        "skipped": "no labeled crops yet"
    }
    assert TrainOutput("checkpoints/r1.pt", 300, 3).as_dict() == {
        "checkpoint": "checkpoints/r1.pt",
        "steps": 300,
        "labeled_crops": 3,
    }
    assert EvaluateOutput(skipped="no model yet").as_dict() == {"skipped": "no model yet"}
    assert EvaluateOutput({"AP50": 0.5, "volumes": []}).as_dict() == {"AP50": 0.5, "volumes": []}
    assert ScoreOutput(8, None).as_dict() == {"scored": 8, "model": None}
    assert SelectOutput((4, 1), "diverse").as_dict() == {"selected": [4, 1], "strategy": "diverse"}
    assert PushOutput(3).as_dict() == {"pushed": 3}


def _context() -> RoundContext:
    fake = SimpleNamespace(project=None, round=SimpleNamespace(number=2, id=5))
    return cast(RoundContext, fake)


def test_label_studio_annotator_stores_what_push_and_ingest_always_stored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pushed = PushResult(project_id=7, pushed=2, recovered=1, tasks=[10, 11])
    ingested = IngestResult(ingested=1, updated=2, skipped=3, withdrawn=4, errors=["task 9: bad"])
    monkeypatch.setattr(annotators, "push_selected", lambda project, round_info: pushed)
    rounds: list[int | None] = []

    def ingest(project: object, *, round_number: int | None = None) -> IngestResult:
        rounds.append(round_number)
        return ingested

    monkeypatch.setattr(annotators, "ingest_annotations", ingest)
    annotator = annotators.LabelStudioAnnotator()
    push = annotator.push(_context()).as_dict()
    collect = annotator.collect(_context()).as_dict()
    assert (push, list(push)) == (pushed.as_dict(), list(pushed.as_dict()))
    assert (collect, list(collect)) == (ingested.as_dict(), list(ingested.as_dict()))
    assert rounds == [2]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("labelstudio", annotators.LabelStudioAnnotator),
        ("simulated", annotators.SimulatedAnnotator),
        ("file", annotators.FileAnnotator),
    ],
)
def test_the_config_names_the_annotator(name: str, kind: type) -> None:
    loop = SimpleNamespace(annotator=name, noise=NoiseConfig(jitter=0.25))
    project = SimpleNamespace(config=SimpleNamespace(loop=loop))
    chosen = annotators.annotator_for(project)  # type: ignore[arg-type]
    assert isinstance(chosen, kind)
    if isinstance(chosen, annotators.SimulatedAnnotator):  # with the config's noise
        assert chosen.noise == annotators.AnnotatorNoise(jitter=0.25)


def test_an_unknown_annotator_is_a_config_error() -> None:
    project = SimpleNamespace(config=SimpleNamespace(loop=SimpleNamespace(annotator="crowd")))
    with pytest.raises(ConfigError, match="'crowd'"):
        annotators.annotator_for(project)  # type: ignore[arg-type]
