"""Per-channel percentile normalization of raw intensities (nnU-Net style).

With ``transform="sqrt"`` intensities are square-rooted first: photon (Poisson) noise then has
about the same spread at every brightness, and a dim neuron is not squeezed next to zero by
the bright ones that set the upper percentile. The percentiles are computed once from the
training crops and stored with the model, so inference maps intensities exactly as training
did: ``lower`` goes to 0, ``upper`` to 1.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import numpy.typing as npt

from activeseg.config import Intensity
from activeseg.errors import InputError

PERCENTILES = (1.0, 99.8)
# Voxels per channel the percentiles are estimated from; more changes them by < 1%.
MAX_VOXELS = 2_000_000


@dataclass(frozen=True)
class Normalization:
    """Per-channel intensity mapping: ``(t(raw) - lower) / (upper - lower)``, t the transform."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    transform: Intensity = "linear"

    @classmethod
    def from_volumes(
        cls,
        raws: Sequence[npt.NDArray[np.generic]],
        seed: int = 0,
        transform: Intensity = "linear",
    ) -> Normalization:
        """Return the normalization of raws, each (C, Z, Y, X) of any numeric dtype."""
        rng = np.random.default_rng(seed)
        channels = raws[0].shape[0]
        per_channel = [
            _transformed(np.concatenate([r[c].ravel() for r in raws]), transform)
            for c in range(channels)
        ]
        lower, upper = [], []
        for values in per_channel:
            if values.size > MAX_VOXELS:
                values = rng.choice(values, MAX_VOXELS, replace=False)
            low, high = np.percentile(values.astype(np.float64), PERCENTILES)
            lower.append(float(low))
            upper.append(float(high) if high > low else float(low) + 1.0)
        return cls(tuple(lower), tuple(upper), transform)

    @property
    def channels(self) -> int:
        """Return the number of channels this normalization expects."""
        return len(self.lower)

    def apply(self, raw: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
        """Return raw (C, ...) mapped to float32, each channel's lower to 0 and upper to 1."""
        if raw.shape[0] != self.channels:
            raise InputError(
                f"raw has {raw.shape[0]} channels, the model was trained on {self.channels}"
            )
        shape = (-1,) + (1,) * (raw.ndim - 1)
        lower = np.asarray(self.lower, np.float32).reshape(shape)
        scale = 1.0 / (np.asarray(self.upper, np.float32).reshape(shape) - lower)
        values = _transformed(raw, self.transform)
        return ((values - lower) * scale).astype(np.float32, copy=False)

    def save(self, path: Path) -> None:
        """Write the normalization as JSON to path."""
        data = {
            "percentiles": list(PERCENTILES),
            "transform": self.transform,
            "lower": self.lower,
            "upper": self.upper,
        }
        path.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: Path) -> Normalization:
        """Return the normalization stored at path by ``save``."""
        try:
            data = json.loads(path.read_text())
            transform = data.get("transform", "linear")  # checkpoints before sqrt existed
            if transform not in get_args(Intensity):
                raise ValueError(f"unknown transform {transform!r}")
            return cls(tuple(data["lower"]), tuple(data["upper"]), transform)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"cannot read the normalization {path}: {exc}") from exc


def _transformed(values: npt.NDArray[np.generic], transform: Intensity) -> npt.NDArray[np.float32]:
    """Return values as float32, square-rooted (negatives as 0) for the sqrt transform."""
    as_float = values.astype(np.float32)
    return np.sqrt(np.maximum(as_float, 0.0)) if transform == "sqrt" else as_float
