"""Simulated rounds: comparing strategies on identical starting projects, and the demo."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from activeseg.config import Config, load_config
from activeseg.data.fisbe import write_fisbe
from activeseg.data.synthetic import generate_mcfo
from activeseg.durable import (
    PARTIAL_SUFFIX,
    partial_name,
    remove_stale_partials,
    replace_durably,
)
from activeseg.errors import InputError
from activeseg.pool import db
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.history import RoundSummary, plot_history, round_history
from activeseg.workflows.importing import import_volume
from activeseg.workflows.locks import LOCK_DIR
from activeseg.workflows.loop import StageEvents, run_round
from activeseg.workflows.project import (
    CONFIG_FILE,
    DATABASE_FILE,
    LEDGER_URL_FILE,
    Project,
    init_project,
    open_project,
)

log = logging.getLogger(__name__)

SIMULATIONS = "simulations"
RoundDone = Callable[[str, int], None]


def simulated_config(config: Config, strategy: str | None, seed: int | None) -> Config:
    """Return the config with the simulated annotator (and a strategy and seed, if given)."""
    acq = config.acquisition.model_copy(
        update={k: v for k, v in (("strategy", strategy), ("seed", seed)) if v is not None}
    )
    loop = config.loop.model_copy(update={"annotator": "simulated"})
    # A seed changes the random choices of selection and of training alike.
    train = config.train.model_copy(update={"seed": seed} if seed is not None else {})
    return Config.model_validate(
        {
            **config.model_dump(),
            "acquisition": acq.model_dump(),
            "loop": loop.model_dump(),
            "train": train.model_dump(),
        }
    )


def run_rounds(
    project: Project,
    rounds: int,
    *,
    strategy: str | None = None,
    events: StageEvents | None = None,
    round_done: RoundDone | None = None,
    label: str = "",
) -> list[RoundSummary]:
    """Run rounds with the simulated annotator until ``rounds`` rounds have finished."""
    with project.session() as session:
        finished = sum(1 for r in pool_rounds.list_rounds(session) if r.finished_at)
    for _ in range(max(0, rounds - finished)):
        info = run_round(project, strategy=strategy if finished else None, events=events)
        finished += 1
        if round_done is not None:
            round_done(label, info.number)
    return round_history(project)


def copy_project(project: Project, target: Path, config: Config) -> Project:
    """Copy a project (database, volumes, labels) into ``target`` with another config.

    The copy is made under a temporary name and renamed into place when complete, and the
    copy is opened at exactly ``target``: an interrupted copy is never mistaken for (or climbs
    to) the original project. The copy's ledger is always a SQLite file: a PostgreSQL ledger
    is copied into one row by row, never shared with the copy.
    """
    if target.exists():
        return open_project(target, search_parents=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent, f".{target.name}.")
    project.engine.dispose()  # flush SQLite's write-ahead log into the file before copying
    partial = partial_name(target)
    skip = shutil.ignore_patterns(
        SIMULATIONS, "*.png", LOCK_DIR, "*" + PARTIAL_SUFFIX, LEDGER_URL_FILE
    )
    shutil.copytree(project.root, partial, ignore=skip)
    if db.is_postgres(project.engine.url):
        db.copy_ledger(project.engine, db.sqlite_url(partial / DATABASE_FILE))
    (partial / CONFIG_FILE).write_text(config.to_yaml())
    replace_durably(partial, target)
    return open_project(target, search_parents=False)


def simulate(
    project: Project,
    rounds: int,
    strategies: Sequence[str],
    seeds: int = 1,
    *,
    events: StageEvents | None = None,
    round_done: RoundDone | None = None,
) -> dict[str, list[RoundSummary]]:
    """Run simulated rounds per strategy and seed; return each run's history by name.

    One strategy and one seed run in the project itself, recorded like real rounds. Several
    run each in a copy of the starting project under ``simulations/`` so that all start from
    identical conditions.
    """
    if rounds < 1 or seeds < 1 or not strategies:
        raise InputError("simulate needs --rounds >= 1, --seeds >= 1 and a strategy")
    if len(strategies) == 1 and seeds == 1:
        runner = replace(project, config=simulated_config(project.config, strategies[0], None))
        history = run_rounds(
            runner,
            rounds,
            strategy=strategies[0],
            events=events,
            round_done=round_done,
            label=strategies[0],
        )
        return {strategies[0]: history}
    results = {}
    for strategy in strategies:
        for seed in range(seeds):
            name = f"{strategy}-seed{seed}"
            config = simulated_config(project.config, strategy, seed)
            copy = copy_project(project, project.root / SIMULATIONS / name, config)
            results[name] = run_rounds(
                copy, rounds, strategy=strategy, events=events, round_done=round_done, label=name
            )
    return results


@dataclass(frozen=True)
class DemoResult:
    """Where the demo's outputs are."""

    project: Path
    history: list[RoundSummary]
    plot: Path


def create_demo_project(root: Path, config: str | Path = "demo") -> Project:
    """Create (or reopen) a project with synthetic MCFO-like pool and val volumes."""
    exists = (root / CONFIG_FILE).exists()
    project = open_project(root) if exists else init_project(root, config)
    with project.session() as session:
        if pool_volumes.list_volumes(session):
            return project
    synth = load_config(root / CONFIG_FILE).synth
    sources = root / "sources"
    sources.mkdir(exist_ok=True)
    splits = ["pool"] * synth.pool_volumes + ["val"] * synth.val_volumes
    for k, split in enumerate(splits):
        volume = generate_mcfo(synth.shape, synth.neurons, seed=synth.seed + k)
        path = sources / f"{split}{k}.zarr"
        write_fisbe(path, volume.raw, volume.instances)
        import_volume(project, path, "fisbe", split=split)
    return project


def run_demo(
    root: Path,
    rounds: int = 3,
    *,
    events: StageEvents | None = None,
    round_done: RoundDone | None = None,
) -> DemoResult:
    """Run the embedded demo: synthetic pool, simulated annotator, several rounds, a plot."""
    project = create_demo_project(root)
    runner = replace(project, config=simulated_config(project.config, None, None))
    history = run_rounds(runner, rounds, events=events, round_done=round_done, label="demo")
    plot = plot_history({"demo": history}, root / "learning-curve.png")
    return DemoResult(project.root, history, plot)
