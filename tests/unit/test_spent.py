"""Labels spent in the annotator's units, recorded in the ledger; the stopping signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activeseg.data.volumes import read_crop_labels
from activeseg.pool import tasks as pool_tasks
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.annotators import answer_open_tasks
from activeseg.workflows.history import (
    RoundSummary,
    next_round_gain,
    round_history,
    with_outlook,
)
from activeseg.workflows.loop import run_round
from activeseg.workflows.simulate import create_demo_project


def test_answered_tasks_record_their_cost_and_history_sums_it(tmp_path: Path) -> None:
    project = create_demo_project(tmp_path / "p", "smoke")
    run_round(project)  # round 0: model-free, queues a batch (no pre-annotation)
    answer_open_tasks(project, round_number=1)
    with project.session() as session:
        costs = pool_tasks.labeled_costs(session)
        tasks = pool_tasks.list_tasks(session)
        crops = {c.id: c for c in pool_volumes.list_crops(session, status="labeled")}
    assert len(costs) == len(tasks) == project.config.acquisition.batch_size
    painted = edits = 0
    for task in tasks:
        labels = read_crop_labels(project.resolve(crops[task.crop_id].label_path or ""))
        shown = labels.labels[list(task.slices)]
        painted += int((shown > 0).sum())
        edits += len(np.unique(shown[shown > 0]))  # no pre-annotation: every neuron added
    assert {round_ for round_, _ in costs} == {1}
    assert sum(c.repainted for _, c in costs) == painted > 0
    assert sum(c.edits for _, c in costs) == edits
    assert {c.slices for _, c in costs} == {project.config.labelstudio.slices}
    (row,) = round_history(project)  # round 0 counts labels made up to round 0: none yet
    assert row.spent is not None and row.spent.measured == 0
    assert row.as_dict()["spent"] == {"slices": 0, "repainted": 0, "edits": 0, "measured": 0}


def _row(number: int, labels: int | None, avf1: float | None) -> RoundSummary:
    return RoundSummary(
        number=number,
        strategy="instance",
        labeled_crops=labels or 0,
        trained_on=labels,
        crops_added=2,
        correction_fraction=None,
        training_seconds=None,
        metrics={} if avf1 is None else {"avF1": avf1},
        stages={},
        finished=True,
    )


def test_next_round_gain_extrapolates_a_log_fit() -> None:
    # avF1 = 0.1 + 0.1 ln(labels): 4 more labels from 4 add 0.1 ln 2
    labels = [2.0, 4.0]
    gain = next_round_gain(labels, [0.1 + 0.1 * np.log(x) for x in labels], batch=4)
    assert gain == pytest.approx(0.1 * np.log(2))
    assert next_round_gain([4.0], [0.3], batch=4) is None
    assert next_round_gain([4.0, 4.0], [0.3, 0.4], batch=4) is None


def test_the_stopping_signal_says_stop_once_the_curve_is_flat() -> None:
    rows = [
        _row(0, None, None),
        _row(1, 2, 0.20),
        _row(2, 4, 0.30),
        _row(3, 6, 0.301),
        _row(4, 8, 0.302),
        _row(5, 10, 0.302),
    ]
    epistemic = {0: 0.5, 1: 0.4, 2: 0.3, 3: 0.29, 4: 0.289}
    batch = dict.fromkeys(range(6), 2)
    out = with_outlook(rows, epistemic, batch, stop_gain=0.02, window=3)
    first, second, third = (r.outlook for r in out[:3])
    assert first is not None and first.next_gain is None and first.epistemic_change is None
    assert second is not None and second.next_gain is None and not second.stop
    assert second.epistemic_change == pytest.approx(-0.1)
    assert third is not None and third.avf1_change == pytest.approx(0.1)
    assert third.next_gain is not None and third.next_gain > 0.02 and not third.stop
    last = out[-1].outlook
    assert last is not None and last.stop and abs(last.next_gain or 1) < 0.02
    assert last.epistemic is None and last.epistemic_change is None  # round 5 not scored
    assert out[-1].as_dict()["outlook"]["stop"] is True
    not_started = with_outlook([_row(1, 2, 0.0), _row(2, 4, 0.0)], {}, batch, stop_gain=0.02)
    assert not_started[-1].outlook is not None and not_started[-1].outlook.next_gain == 0.0
    assert not not_started[-1].outlook.stop  # flat at zero: the model has not started


def test_history_and_round_print_the_stopping_signal(capsys: pytest.CaptureFixture[str]) -> None:
    from activeseg.cli.render import print_history, print_outlook

    rows = [_row(1, 2, 0.20), _row(2, 4, 0.30), _row(3, 6, 0.30), _row(4, 8, 0.30)]
    out = with_outlook(rows, {3: 0.2, 4: 0.19}, dict.fromkeys(range(5), 2), stop_gain=0.05)
    print_history(out)
    printed = capsys.readouterr().out
    assert "next" in printed and "one more round: expected avF1" in printed
    assert "(stopping is reasonable)" in printed and "-0.0100" in printed
    print_outlook(out[0])
    assert "not enough evaluated rounds" in capsys.readouterr().out
