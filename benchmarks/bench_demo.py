"""Time `activeseg demo` (what `make demo` runs) against its 5-minute target on this machine.

Runs the demo in a fresh temporary directory through the installed console script, so the
time includes start-up, synthetic data, every round and the learning-curve plot.

    .venv/bin/python benchmarks/bench_demo.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 300.0


def main() -> None:
    """Run the demo once and print its wall time and the ratio to the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    script = Path(sys.executable).with_name("activeseg")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run(
            [str(script), "demo", str(Path(tmp) / "demo"), "--rounds", str(args.rounds)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - started
    print(
        f"activeseg demo, {args.rounds} rounds: {seconds:.0f} s = "
        f"{seconds / TARGET_S:.2f} x the {TARGET_S:.0f} s target"
    )
    sys.exit(0 if seconds <= TARGET_S else 1)


if __name__ == "__main__":
    main()
