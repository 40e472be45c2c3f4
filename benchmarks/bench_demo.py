"""Time `activeseg demo` (what `make demo` runs) against its 5-minute target on this machine,
and check its story: validation avF1 rising over its rounds.

Runs the demo in a fresh temporary directory through the installed console script, so the
time includes start-up, synthetic data, every round and the learning-curve plot; then reads
the demo's own history (`activeseg history --json`) and prints avF1 and AP50 per round.

    .venv/bin/python benchmarks/bench_demo.py [--rounds N]   # N: the demo's default if unset
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from itertools import pairwise
from pathlib import Path

TARGET_S = 300.0


def main() -> None:
    """Run the demo once; print its wall and CPU time, the ratio to the target, the curve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("activeseg")
    rounds = [] if args.rounds is None else ["--rounds", str(args.rounds)]
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        started = time.perf_counter()
        subprocess.run(
            [str(script), "demo", str(demo), *rounds], check=True, stdout=subprocess.DEVNULL
        )
        seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        history = json.loads(
            subprocess.run(
                [str(script), "history", "--json", "-p", str(demo)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
    cpu = usage.ru_utime + usage.ru_stime
    print(
        f"activeseg demo, {len(history)} rounds: {seconds:.0f} s = "
        f"{seconds / TARGET_S:.2f} x the {TARGET_S:.0f} s target (CPU {cpu:.0f} s: "
        f"{cpu / 2:.0f} s of 2 busy cores)"
    )
    curve = [(r["trained_on"], r["metrics"]["avF1"], r["metrics"].get("AP50")) for r in history
             if r["metrics"].get("avF1") is not None]  # fmt: skip
    for crops, avf1, ap50 in curve:
        print(f"  {crops} labeled crops: avF1 {avf1:.3f}, AP50 {ap50:.3f}")
    values = [v for _, v, _ in curve]
    rising = len(values) >= 2 and values[-1] > values[0]
    steady = all(b >= a for a, b in pairwise(values))
    print(f"avF1 rises first to last: {rising}; never falls: {steady}")
    sys.exit(0 if seconds <= TARGET_S and rising else 1)


if __name__ == "__main__":
    main()
