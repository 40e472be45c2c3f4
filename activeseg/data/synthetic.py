"""Synthetic MCFO-like volumes: the embedded default data of activeseg.

A volume holds long, thin, branching neurites that cross it, drawn as smooth random walks
("trunks") with side branches. Some neurons follow a shared tract, twisting around it, so
neurons intertwine, touch and overlap as they do in FlyLight MCFO images; voxels covered by two
neurons belong to both. Each neuron expresses a random subset of the colour channels (MCFO is
stochastic), some neurons are dim, and the image passes through an anisotropic blur (stronger in
z), a background level and Poisson-Gaussian camera noise.

Geometry is in voxels, isotropic; only the blur is anisotropic. Everything is drawn from one
``numpy.random.Generator`` seeded by the caller, so a seed gives identical arrays every time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from activeseg.core.instances import Instances
from activeseg.errors import InputError

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]
Shape3 = tuple[int, int, int]

# Geometry, in voxels.
TRUNK_RADIUS = (1.2, 2.4)  # uniform range of a neuron's trunk radius
BRANCH_RADIUS_FACTOR = (0.55, 0.85)  # branch radius relative to the trunk
MIN_RADIUS = 1.0  # >= sqrt(3)/2 keeps a tube sampled at 1-voxel steps 26-connected
MEAN_EXTRA_BRANCHES = 2.0  # every neuron has 1 + Poisson(this) primary branches
SUB_BRANCH_PROBABILITY = 0.5
MAX_ELEVATION = 0.5  # radians out of the yx plane; keeps neurites crossing flat volumes
TURN_SCALE = 0.07  # per-voxel heading noise before smoothing (about 0.8 rad drift per 150 voxels)
TURN_SMOOTHING = 8.0  # voxels; larger gives gentler curves
# Tracts: shared paths that some neurons twist around (intertwined, touching, overlapping).
NEURONS_PER_TRACT = 5
TRACT_PROBABILITY = 0.5
TWIST_AMPLITUDE = (1.5, 4.0)
TWIST_PERIOD = (25.0, 60.0)

# Appearance, in camera counts.
BRIGHTNESS = (150.0, 800.0)  # log-uniform brightness of a neuron
DIM_BRIGHTNESS = (50.0, 120.0)
DIM_PROBABILITY = 0.2
CHANNEL_PROBABILITY = 0.5  # each channel is expressed independently (at least one is)
# Log-uniform level of an expressed channel relative to the neuron's strongest one. MCFO tags
# express at different levels, so hues vary continuously (a FISBe neuron reads 0.27:0.35:1).
RELATIVE_LEVEL = (0.2, 1.0)
SPECKLE_SHAPE = 3.0  # gamma shape of per-voxel label density; smaller is grainier
BACKGROUND = (6.0, 14.0)
BLUR_SIGMA = (1.6, 0.7, 0.7)  # (z, y, x) voxels: the PSF is longer along the optical axis
GAIN = 2.0  # counts per photon
READ_NOISE = 2.0  # counts
UINT16_MAX = 65535


@dataclass(frozen=True)
class SyntheticVolume:
    """A synthetic multi-colour volume and its ground truth.

    raw: (C, Z, Y, X) uint16 image.
    instances: the neurons, ids 1..N; voxels of two or more neurons are in ``overlaps``.
    colors: (N, C) float64 expression of neuron k+1 in each channel, in counts (0 = not
        expressed); before blur and noise.
    """

    raw: npt.NDArray[np.uint16]
    instances: Instances
    colors: FloatArray


@dataclass(frozen=True)
class _Skeleton:
    """Centerline samples of one neuron, one voxel apart along each neurite.

    points: (P, 3) float64 (z, y, x); radii: (P,) float64; shading: (P,) float64 around 1.
    """

    points: FloatArray
    radii: FloatArray
    shading: FloatArray


def generate_mcfo(
    shape: tuple[int, int, int], n_neurons: int, seed: int, channels: int = 3
) -> SyntheticVolume:
    """Return a synthetic MCFO-like volume of ``n_neurons`` neurons, identical for a seed.

    shape: (Z, Y, X) of the volume; raw is (channels, Z, Y, X) uint16.
    """
    _check_arguments(shape, n_neurons, channels)
    rng = np.random.default_rng(seed)
    tracts = [_trunk_path(rng, shape) for _ in range(_count_tracts(n_neurons))]
    skeletons = [_neuron_skeleton(rng, shape, tracts) for _ in range(n_neurons)]
    voxel_sets = [_rasterize(skeleton, shape) for skeleton in skeletons]
    instances = _assemble_instances([flat for flat, _ in voxel_sets], shape)
    colors = _random_colors(rng, n_neurons, channels)
    signal = _render_signal(rng, skeletons, voxel_sets, colors, shape)
    raw = _camera(rng, _blur(signal) + _background(rng, shape, channels))
    logger.debug(
        "synthetic volume %s: %d neurons, %d overlap voxels",
        shape,
        n_neurons,
        len(instances.overlaps),
    )
    return SyntheticVolume(raw, instances, colors)


def _check_arguments(shape: tuple[int, int, int], n_neurons: int, channels: int) -> None:
    """Return nothing; raise InputError for an unusable shape, neuron or channel count."""
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(f"synthetic volume shape must be 3 positive sizes (Z, Y, X), got {shape}")
    if n_neurons < 1:
        raise InputError(f"a synthetic volume needs at least one neuron, got {n_neurons}")
    if channels < 1:
        raise InputError(f"a synthetic volume needs at least one channel, got {channels}")


def _count_tracts(n_neurons: int) -> int:
    """Return how many shared tracts a volume of ``n_neurons`` neurons gets."""
    return max(1, round(n_neurons / NEURONS_PER_TRACT))


# --- geometry -------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, length: int, scale: float) -> FloatArray:
    """Return (length,) float64 Gaussian noise smoothed along its axis (correlated turns)."""
    noise = rng.normal(0.0, scale, length)
    return ndimage.gaussian_filter1d(noise, TURN_SMOOTHING, mode="nearest")


def _walk(
    rng: np.random.Generator, start: FloatArray, azimuth: float, elevation: float, length: int
) -> FloatArray:
    """Return a (length, 3) float64 smooth random walk of unit steps from ``start``.

    azimuth: initial heading in the yx plane (radians from +x towards +y); elevation: initial
    angle out of the yx plane, kept within MAX_ELEVATION.
    """
    azimuths = azimuth + np.cumsum(_smooth_noise(rng, length, TURN_SCALE))
    tilt = np.arctanh(np.clip(elevation / MAX_ELEVATION, -0.99, 0.99))
    elevations = MAX_ELEVATION * np.tanh(tilt + np.cumsum(_smooth_noise(rng, length, TURN_SCALE)))
    steps = np.column_stack(
        [
            np.sin(elevations),
            np.cos(elevations) * np.sin(azimuths),
            np.cos(elevations) * np.cos(azimuths),
        ]
    )
    return start + np.cumsum(steps, axis=0) - steps[0]


def _fold_z(points: FloatArray, depth: int) -> FloatArray:
    """Return (P, 3) points with z reflected into [0, depth - 1], as if bouncing off the faces."""
    folded = points.copy()
    top = max(depth - 1, 1e-6)
    phase = np.mod(points[:, 0], 2 * top)
    folded[:, 0] = top - np.abs(phase - top)
    return folded


def _trunk_path(rng: np.random.Generator, shape: Shape3) -> FloatArray:
    """Return a (L, 3) float64 path through a random interior point, leaving both ways."""
    depth, height, width = shape
    through = np.array(
        [
            rng.uniform(0, depth - 1),
            rng.uniform(0.2, 0.8) * (height - 1),
            rng.uniform(0.2, 0.8) * (width - 1),
        ]
    )
    azimuth, elevation = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)
    half = max(height, width) + 1
    forward = _walk(rng, through, azimuth, elevation, half)
    backward = _walk(rng, through, azimuth + np.pi, -elevation, half)
    return np.concatenate([backward[::-1], forward[1:]])


def _inside_yx(path: FloatArray, shape: Shape3) -> npt.NDArray[np.bool_]:
    """Return a (L,) mask of the path samples inside the volume in y and x (z is folded later)."""
    upper = np.array(shape[1:], float) - 1.0
    return np.all((path[:, 1:] >= 0) & (path[:, 1:] <= upper), axis=1)


def _azimuths(path: FloatArray) -> FloatArray:
    """Return the (L,) float64 local heading of a path in the yx plane, in radians."""
    if len(path) < 2:
        return np.zeros(len(path))
    tangent = np.gradient(path, axis=0)
    return np.arctan2(tangent[:, 1], tangent[:, 2])


def _twist_around(rng: np.random.Generator, tract: FloatArray) -> FloatArray:
    """Return a (L, 3) float64 path that winds around ``tract`` like a loose, irregular helix."""
    tangent = np.gradient(tract, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    side = np.cross(tangent, np.array([1.0, 0.0, 0.0]))
    side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-9)
    normal = np.cross(tangent, side)
    rate = 2 * np.pi / rng.uniform(*TWIST_PERIOD) * _wobble(rng, len(tract))
    angle = rng.uniform(0, 2 * np.pi) + np.cumsum(rate)
    amplitude = rng.uniform(*TWIST_AMPLITUDE) * _wobble(rng, len(tract))
    circle = np.cos(angle)[:, None] * side + np.sin(angle)[:, None] * normal
    return tract + amplitude[:, None] * circle


def _wobble(rng: np.random.Generator, length: int) -> FloatArray:
    """Return (length,) float64 factors drifting smoothly around 1, within [0.3, 1.7]."""
    return np.clip(1.0 + 2.5 * _smooth_noise(rng, length, 1.0), 0.3, 1.7)


def _branch(
    rng: np.random.Generator, parent: FloatArray, length: int, shape: Shape3
) -> list[FloatArray]:
    """Return a (L, 3) float64 walk leaving ``parent`` inside the volume at a random point and
    angle, as a one-item list; an empty list when ``parent`` never enters the volume."""
    candidates = np.flatnonzero(_inside_yx(parent, shape))
    if len(candidates) == 0 or length < 2:
        return []
    origin = int(rng.choice(candidates))
    heading = _azimuths(parent)[origin] + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.4)
    return [_walk(rng, parent[origin], heading, rng.uniform(-0.4, 0.4), length)]


def _neuron_paths(
    rng: np.random.Generator, shape: Shape3, tracts: list[FloatArray]
) -> list[FloatArray]:
    """Return the (L, 3) float64 paths of one neuron: its trunk (maybe winding around a tract),
    then its primary and secondary branches."""
    if rng.random() < TRACT_PROBABILITY:
        trunk = _twist_around(rng, tracts[rng.integers(len(tracts))])
    else:
        trunk = _trunk_path(rng, shape)
    span = max(shape[1], shape[2])
    primary: list[FloatArray] = []
    for _ in range(1 + rng.poisson(MEAN_EXTRA_BRANCHES)):
        primary += _branch(rng, trunk, int(span * rng.uniform(0.3, 0.8)), shape)
    secondary: list[FloatArray] = []
    for branch in primary:
        if rng.random() < SUB_BRANCH_PROBABILITY:
            secondary += _branch(rng, branch, int(span * rng.uniform(0.15, 0.4)), shape)
    return [trunk, *primary, *secondary]


def _neuron_skeleton(
    rng: np.random.Generator, shape: Shape3, tracts: list[FloatArray]
) -> _Skeleton:
    """Return the skeleton of one neuron, cut to the samples that can touch the volume."""
    paths = _neuron_paths(rng, shape, tracts)
    trunk_radius = rng.uniform(*TRUNK_RADIUS)
    radii: list[FloatArray] = [np.full(len(paths[0]), trunk_radius)]
    radii += [_tapered(rng, len(path), trunk_radius) for path in paths[1:]]
    points = _fold_z(np.concatenate(paths), shape[0])
    skeleton = _Skeleton(points, np.concatenate(radii), _shading(rng, paths))
    return _clip_to_volume(skeleton, shape)


def _tapered(rng: np.random.Generator, length: int, trunk_radius: float) -> FloatArray:
    """Return (length,) float64 radii of a branch that thins by a third towards its tip."""
    start = trunk_radius * rng.uniform(*BRANCH_RADIUS_FACTOR)
    return np.maximum(start * np.linspace(1.0, 0.67, length), MIN_RADIUS)


def _shading(rng: np.random.Generator, paths: list[FloatArray]) -> FloatArray:
    """Return (sum of path lengths,) float64 brightness factors along the paths: slow drift
    times short swellings (varicosities)."""
    total = sum(len(path) for path in paths)
    drift = 1.0 + 6.0 * _smooth_noise(rng, total, 0.25)
    beads = 1.0 + 0.8 * ndimage.gaussian_filter1d(rng.normal(size=total), 1.5)
    return np.clip(drift, 0.5, 1.5) * np.clip(beads, 0.4, 1.8)


def _clip_to_volume(skeleton: _Skeleton, shape: Shape3) -> _Skeleton:
    """Return the skeleton without the samples too far outside the volume to touch it."""
    margin = skeleton.radii[:, None]
    upper = np.array(shape, float) - 1.0
    keep = np.all((skeleton.points >= -margin) & (skeleton.points <= upper + margin), axis=1)
    return _Skeleton(skeleton.points[keep], skeleton.radii[keep], skeleton.shading[keep])


# --- rasterization --------------------------------------------------------------------------


def _ball_offsets(radius: float) -> IndexArray:
    """Return (O, 3) int64 offsets of every voxel that a ball of ``radius`` around a point
    within half a voxel of the origin can reach."""
    reach = int(np.ceil(radius + 0.5))
    grid = np.arange(-reach, reach + 1)
    offsets = np.stack(np.meshgrid(grid, grid, grid, indexing="ij"), axis=-1).reshape(-1, 3)
    return offsets[np.linalg.norm(offsets, axis=1) <= radius + np.sqrt(3) / 2]


def _rasterize(skeleton: _Skeleton, shape: Shape3) -> tuple[IndexArray, IndexArray]:
    """Return ``(flat, source)``: sorted unique (M,) int64 flat indices of the voxels within a
    sample's radius of the skeleton, and the (M,) int64 index of one sample covering each."""
    if len(skeleton.points) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    centers = np.rint(skeleton.points).astype(np.int64)
    voxels = centers[:, None, :] + _ball_offsets(float(skeleton.radii.max()))[None]
    distance2 = np.sum((voxels - skeleton.points[:, None, :]) ** 2, axis=-1)
    inside = distance2 <= skeleton.radii[:, None] ** 2
    inside &= np.all((voxels >= 0) & (voxels < np.array(shape)), axis=-1)
    sample, offset = np.nonzero(inside)
    flat = np.ravel_multi_index(tuple(voxels[sample, offset].T), shape)
    unique, first = np.unique(flat, return_index=True)
    return unique.astype(np.int64), sample[first].astype(np.int64)


def _assemble_instances(voxel_sets: list[IndexArray], shape: Shape3) -> Instances:
    """Return instances with id k+1 on ``voxel_sets[k]`` (flat indices); shared voxels keep the
    smallest id in the label image and list the others as overlaps."""
    labels = np.zeros(int(np.prod(shape)), np.uint32)
    overlaps = []
    for instance_id, flat in enumerate(voxel_sets, start=1):
        taken = labels[flat] > 0
        coords = np.column_stack(np.unravel_index(flat[taken], shape))
        overlaps.append(np.column_stack([coords, np.full(len(coords), instance_id)]))
        labels[flat[~taken]] = instance_id
    rows = np.concatenate(overlaps).astype(np.int64).reshape(-1, 4)
    return Instances(labels.reshape(shape), rows)


# --- appearance -----------------------------------------------------------------------------


def _random_colors(rng: np.random.Generator, n_neurons: int, channels: int) -> FloatArray:
    """Return (n_neurons, channels) float64 expression levels: random channel subsets, some dim."""
    expressed = rng.random((n_neurons, channels)) < CHANNEL_PROBABILITY
    expressed[np.arange(n_neurons), rng.integers(0, channels, n_neurons)] = True
    dim = rng.random(n_neurons) < DIM_PROBABILITY
    bright = _log_uniform(rng, BRIGHTNESS, n_neurons)
    faint = _log_uniform(rng, DIM_BRIGHTNESS, n_neurons)
    brightness = np.where(dim, faint, bright)
    relative = np.where(expressed, _log_uniform(rng, RELATIVE_LEVEL, (n_neurons, channels)), 0.0)
    return brightness[:, None] * relative / relative.max(axis=1, keepdims=True)


def _log_uniform(
    rng: np.random.Generator, bounds: tuple[float, float], size: int | tuple[int, ...]
) -> FloatArray:
    """Return float64 values of shape ``size`` log-uniform between ``bounds``."""
    return np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]), size))


def _render_signal(
    rng: np.random.Generator,
    skeletons: list[_Skeleton],
    voxel_sets: list[tuple[IndexArray, IndexArray]],
    colors: FloatArray,
    shape: Shape3,
) -> npt.NDArray[np.float32]:
    """Return the (C, Z, Y, X) float32 fluorescence of all neurons, summed where they overlap.

    Each voxel's brightness follows its skeleton sample's shading times a speckle factor
    (mean 1): labelling is punctate, not uniform.
    """
    signal = np.zeros((colors.shape[1], int(np.prod(shape))), np.float32)
    for skeleton, (flat, source), color in zip(skeletons, voxel_sets, colors, strict=True):
        speckle = rng.gamma(SPECKLE_SHAPE, 1.0 / SPECKLE_SHAPE, len(flat))
        brightness = (skeleton.shading[source] * speckle).astype(np.float32)
        for channel in np.flatnonzero(color):
            signal[channel, flat] += np.float32(color[channel]) * brightness
    return signal.reshape(-1, *shape)


def _blur(signal: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Return the (C, Z, Y, X) float32 signal blurred by the anisotropic point spread function."""
    blurred = np.empty_like(signal)
    for channel in range(len(signal)):
        ndimage.gaussian_filter(signal[channel], BLUR_SIGMA, output=blurred[channel], truncate=3.0)
    return blurred


def _background(rng: np.random.Generator, shape: Shape3, channels: int) -> npt.NDArray[np.float32]:
    """Return a (C, Z, Y, X) float32 background: a level per channel, varying slowly in space."""
    levels = rng.uniform(*BACKGROUND, channels).astype(np.float32)
    depth, height, width = (_slow_profile(rng, size).astype(np.float32) for size in shape)
    drift = 1.0 + 0.1 * (depth[:, None, None] + height[None, :, None] + width[None, None, :])
    return levels[:, None, None, None] * drift[None]


def _slow_profile(rng: np.random.Generator, length: int) -> FloatArray:
    """Return a (length,) float64 smooth random profile scaled into [-1, 1]."""
    profile = ndimage.gaussian_filter1d(
        rng.normal(size=length), max(length / 6.0, 1.0), mode="wrap"
    )
    return profile / max(float(np.abs(profile).max()), 1e-9)


def _camera(rng: np.random.Generator, expected: npt.NDArray[np.float32]) -> npt.NDArray[np.uint16]:
    """Return (C, Z, Y, X) uint16 counts: Poisson photon noise plus Gaussian read noise."""
    photons = rng.poisson(expected / GAIN).astype(np.float32)
    counts = photons * GAIN + rng.normal(0.0, READ_NOISE, expected.shape).astype(np.float32)
    return np.clip(np.rint(counts), 0, UINT16_MAX).astype(np.uint16)
