"""Time the synthetic MCFO generator on one core against its 10 s target.

Run: .venv/bin/python benchmarks/bench_synth.py
Prints the best of 3 runs of ``generate_mcfo((64, 256, 256), 20, seed=0)`` and its ratio to the
target; exits 1 when over target. Thread pools are pinned to one thread before numpy is imported
(and again with threadpoolctl, when installed) so the number means "one core".
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = "1"

import sys  # noqa: E402
import time  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from typing import Any  # noqa: E402

from activeseg.data.synthetic import generate_mcfo  # noqa: E402

SHAPE = (64, 256, 256)
N_NEURONS = 20
REPEATS = 3
TARGET_SECONDS = 10.0


def _single_thread() -> Any:
    """Return a context manager limiting native thread pools to one thread (if possible)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1)


def best_time() -> float:
    """Return the best wall-clock seconds of REPEATS generations of the benchmark volume."""
    times = []
    with _single_thread():
        for _ in range(REPEATS):
            start = time.perf_counter()
            generate_mcfo(SHAPE, N_NEURONS, seed=0)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> int:
    """Return the exit status: 0 within target, 1 over it."""
    seconds = best_time()
    ratio = seconds / TARGET_SECONDS
    verdict = "ok" if seconds <= TARGET_SECONDS else "OVER TARGET"
    print(
        f"generate_mcfo({SHAPE}, {N_NEURONS}) on 1 thread: {seconds:.2f} s "
        f"(best of {REPEATS}), {ratio:.2f} x the {TARGET_SECONDS:.0f} s target: {verdict}"
    )
    return 0 if seconds <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
