"""Pool scoring cost per round against pool size, and the score cache of an unchanged model.

For pools of 4, 8 and 16 synthetic MCFO-like volumes (one project each, same volumes), with a
fixed ``acquisition.max_candidates``, a model saved untrained (its cost is the cost of any
checkpoint of this architecture, its scores do not matter here), and the real score stage
(``workflows.score.score_pool``: predict, cluster every sample, uncertainty maps to zarr,
scores to the ledger) followed by ``select_crops``:

- round 1: the cold score stage (every candidate runs through the model) and the selection;
  goal: flat in the pool size, i.e. time(16 volumes) / time(4 volumes) <= 1.5 (linear is 4);
- round 2, same model: the score stage again, which takes every candidate from the score
  cache (hard-linking its maps); goal: time(round 2) / time(round 1) <= 0.1.

``--baseline`` also times round 1 without a budget (every unlabeled crop) at each size, which
is what a round cost before ``max_candidates``: linear in the pool.

    .venv/bin/python benchmarks/bench_pool_scoring.py [--volumes 4 8 16] [--max-candidates 24]
        [--shape 16 128 128] [--crop 16 32 32] [--config smoke] [--baseline]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activeseg.config import Config, load_config
from activeseg.core.models.checkpoint import save_checkpoint
from activeseg.core.models.normalization import Normalization
from activeseg.core.models.probabilistic import ProbabilisticModel
from activeseg.data.fisbe import write_fisbe
from activeseg.data.synthetic import generate_mcfo
from activeseg.pool import rounds as pool_rounds
from activeseg.workflows import score
from activeseg.workflows.importing import import_volume
from activeseg.workflows.project import Project, init_project

FLAT_GOAL = 1.5
CACHE_GOAL = 0.1


@dataclass(frozen=True)
class PoolTiming:
    """One pool size: crops, seconds of the cold and cached score stages and of selection."""

    volumes: int
    unlabeled: int
    scored: int
    cold_s: float
    select_s: float
    cached_s: float
    cached: int
    computed_again: int
    all_crops_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the timing as plain data."""
        return dict(self.__dict__)


def bench_config(name: str, shape: Sequence[int], crop: Sequence[int], budget: int) -> Config:
    """Return the named config with the synthetic shape, crop size and candidate budget."""
    data = load_config(name).model_dump()
    data["synth"]["shape"] = list(shape)
    data["crops"]["size"] = list(crop)
    data["crops"]["stride"] = list(crop)
    data["train"]["patch"] = list(crop)
    data["acquisition"]["max_candidates"] = budget
    data["acquisition"]["strategy"] = "instance"
    return Config.model_validate(data)


def make_sources(folder: Path, config: Config, count: int) -> list[Path]:
    """Write ``count`` synthetic volumes in FISBe layout; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        volume = generate_mcfo(config.synth.shape, config.synth.neurons, seed=100 + k)
        path = folder / f"pool{k}.zarr"
        write_fisbe(path, volume.raw, volume.instances)
        paths.append(path)
    return paths


def make_project(root: Path, config: Config, sources: Sequence[Path]) -> Project:
    """Return a project holding ``sources`` as pool volumes, with the bench config."""
    root.mkdir(parents=True)
    (root.parent / f"{root.name}.yaml").write_text(config.to_yaml())
    project = init_project(root, root.parent / f"{root.name}.yaml")
    for path in sources:
        import_volume(project, path, "fisbe", split="pool")
    return project


def untrained_checkpoint(folder: Path, config: Config, channels: int) -> Path:
    """Save an untrained model of the config's architecture; return its folder."""
    model_config = config.model.with_channels(channels)
    resolved = Config.model_validate({**config.model_dump(), "model": model_config.model_dump()})
    model = ProbabilisticModel(resolved.model, seed=0)
    normalization = Normalization((0.0,) * channels, (1000.0,) * channels)
    return save_checkpoint(folder, model, resolved, normalization, {"steps": 0})


def timed_round(project: Project, model: Path) -> tuple[float, score.ScoreReport, int]:
    """Start a round, run its score stage; return seconds, the report and the round id."""
    with project.session() as session:
        info = pool_rounds.start_round(session, strategy="instance", batch_size=4, config="")
    start = time.perf_counter()
    report = score.score_pool(project, info.id, info.number, model)
    return time.perf_counter() - start, report, info.id


def bench_pool(
    root: Path, config: Config, sources: Sequence[Path], model: Path, baseline: bool
) -> PoolTiming:
    """Return the timings of one pool size."""
    project = make_project(root / f"pool-{len(sources)}", config, sources)
    cold_s, cold, round_id = timed_round(project, model)
    start = time.perf_counter()
    score.select_crops(project, round_id, "instance", 4)
    select_s = time.perf_counter() - start
    cached_s, again, _ = timed_round(project, model)
    all_crops_s = None
    if baseline:
        data = config.model_dump()
        data["acquisition"]["max_candidates"] = None
        unbudgeted = Project(project.root, Config.model_validate(data), project.engine)
        other = untrained_checkpoint(root / f"model-{len(sources)}", config, 3)
        all_crops_s, _, _ = timed_round(unbudgeted, other)
    project.engine.dispose()
    return PoolTiming(
        volumes=len(sources),
        unlabeled=cold.unlabeled,
        scored=cold.scored,
        cold_s=cold_s,
        select_s=select_s,
        cached_s=cached_s,
        cached=again.cached,
        computed_again=again.computed,
        all_crops_s=all_crops_s,
    )


def report(timings: Sequence[PoolTiming]) -> dict[str, Any]:
    """Print a table and the ratios to the goals; return them."""
    print(
        f"{'volumes':>7} {'crops':>6} {'scored':>6} {'round 1 s':>9} {'select s':>8} "
        f"{'round 2 s':>9} {'cached':>6} {'all crops s':>11}"
    )
    for t in timings:
        everything = "-" if t.all_crops_s is None else f"{t.all_crops_s:.2f}"
        print(
            f"{t.volumes:>7} {t.unlabeled:>6} {t.scored:>6} {t.cold_s:>9.2f} "
            f"{t.select_s:>8.3f} {t.cached_s:>9.2f} {t.cached:>6} {everything:>11}"
        )
    small, large = timings[0], timings[-1]
    growth = large.cold_s / small.cold_s
    pool_growth = large.unlabeled / small.unlabeled
    cache = max(t.cached_s / t.cold_s for t in timings)
    result = {
        "cold_time_ratio": growth,
        "pool_size_ratio": pool_growth,
        "flat_goal": FLAT_GOAL,
        "cached_over_cold_worst": cache,
        "cache_goal": CACHE_GOAL,
        "flat_ok": growth <= FLAT_GOAL,
        "cache_ok": cache <= CACHE_GOAL and all(t.computed_again == 0 for t in timings),
    }
    flat = "met" if result["flat_ok"] else "MISSED"
    cached = "met" if result["cache_ok"] else "MISSED"
    print(
        f"round 1 time, {large.volumes} vs {small.volumes} volumes: x{growth:.2f} for a pool "
        f"x{pool_growth:.1f} larger (goal <= {FLAT_GOAL}: {flat})"
    )
    print(
        f"round 2 (unchanged model) / round 1, worst size: {cache:.3f} "
        f"(goal <= {CACHE_GOAL}: {cached})"
    )
    if all(t.all_crops_s is not None for t in timings):
        linear = [t.all_crops_s / t.cold_s for t in timings if t.all_crops_s is not None]
        print("without a budget / with: " + ", ".join(f"x{r:.1f}" for r in linear))
    return result


def main() -> None:
    """Run the benchmark and print its numbers and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--max-candidates", type=int, default=24)
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 128, 128])
    parser.add_argument("--crop", type=int, nargs=3, default=[16, 32, 32])
    parser.add_argument("--config", default="smoke")
    parser.add_argument("--baseline", action="store_true", help="also time every crop, no budget")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    config = bench_config(args.config, args.shape, args.crop, args.max_candidates)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sources = make_sources(root / "sources", config, max(args.volumes))
        model = untrained_checkpoint(root / "model", config, 3)
        timings = [
            bench_pool(root, config, sources[:n], model, args.baseline)
            for n in sorted(args.volumes)
        ]
    result = report(timings)
    if args.json:
        args.json.write_text(json.dumps({"timings": [t.as_dict() for t in timings], **result}))


if __name__ == "__main__":
    main()
