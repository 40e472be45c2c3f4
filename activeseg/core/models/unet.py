"""The 3-D U-Net backbone: anisotropic pooling, GroupNorm with fixed inference statistics.

Plain ``GroupNorm`` normalizes every forward pass with the statistics of the whole input, so a
tile's output depends on what else is in the tile and tiled inference shows seams. The
normalization here behaves like GroupNorm while training (per-sample statistics) and uses fixed
statistics at inference, which makes every output voxel depend only on its receptive field:
tiles stitched from their valid centres equal one pass. The fixed statistics are those of the
volume being predicted (``calibrating``: AdaBN, Li et al. 2016): a network trained with
per-patch statistics expects its input's own, and segments far worse with running averages
from training (see BENCHMARKS.md, Session 5), which are therefore not kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

Triple = tuple[int, int, int]
# Makes a convolution from (in_channels, out_channels, kernel_size, padding): nn.Conv3d, or a
# variational one (bayes.BayesConv3d).
ConvFactory = Callable[..., nn.Module]


class CalibratedGroupNorm(nn.Module):
    """GroupNorm that, in eval mode, normalizes with statistics fixed by ``calibrating``.

    Until calibrated (or after training, which leaves the statistics alone) eval mode
    normalizes every input by its own statistics, as in training.
    """

    running_mean: torch.Tensor
    running_var: torch.Tensor
    tracked: torch.Tensor  # how many calibration passes set the statistics (0: none yet)

    def __init__(self, groups: int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(groups))
        self.register_buffer("running_var", torch.ones(groups))
        self.register_buffer("tracked", torch.zeros((), dtype=torch.long))
        self.calibrating = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x (B, C, Z, Y, X) normalized per channel group."""
        if not self.training and self.calibrating:
            self._calibrate(x)
        if self.training or not bool(self.tracked):
            return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
        per_group = x.shape[1] // self.groups
        inv_std = torch.rsqrt(self.running_var + self.eps).repeat_interleave(per_group)
        scale = self.weight * inv_std
        shift = self.bias - self.running_mean.repeat_interleave(per_group) * scale
        view = (1, -1) + (1,) * (x.ndim - 2)
        return torch.addcmul(shift.view(view), x, scale.view(view))

    @torch.no_grad()
    def _calibrate(self, x: torch.Tensor) -> None:
        """Replace the fixed statistics by those of x, all batch items pooled."""
        pooled = x.transpose(0, 1).reshape(self.groups, -1)
        var, mean = torch.var_mean(pooled, dim=-1, correction=0)
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
        self.tracked += 1


@contextmanager
def calibrating(module: nn.Module) -> Iterator[None]:
    """Within the block, an inference pass of module sets the statistics of its normalization
    layers to those of its input (every batch item pooled), as GroupNorm computes them for
    one sample; they stay after the block, for the passes that follow."""
    norms = [m for m in module.modules() if isinstance(m, CalibratedGroupNorm)]
    for norm in norms:
        norm.calibrating = True
    try:
        yield
    finally:
        for norm in norms:
            norm.calibrating = False


def conv_block(
    in_channels: int,
    out_channels: int,
    groups: int,
    dropout: float = 0.0,
    conv: ConvFactory = nn.Conv3d,
) -> nn.Sequential:
    """Return two (3x3x3 conv, GroupNorm, ReLU) layers, then channel dropout when dropout > 0."""
    layers: list[nn.Module] = []
    for cin in (in_channels, out_channels):
        layers += [
            conv(cin, out_channels, 3, padding=1),
            CalibratedGroupNorm(min(groups, out_channels), out_channels),
            nn.ReLU(inplace=True),
        ]
    if dropout > 0:
        # Whole channels are dropped: the mask does not depend on the tile's size, so
        # re-seeding per tile gives one consistent network per MC sample across a volume.
        layers.append(nn.Dropout3d(dropout))
    return nn.Sequential(*layers)


class UNet3d(nn.Module):
    """A 3-D U-Net mapping (B, C, Z, Y, X) to (B, widths[0], Z, Y, X) features.

    Every spatial size must be divisible by ``divisor()`` (the product of the pool factors).
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int],
        pool: Sequence[Triple],
        groups: int,
        dropout: float = 0.0,
        conv: ConvFactory = nn.Conv3d,
    ) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.pool: tuple[Triple, ...] = tuple((p[0], p[1], p[2]) for p in pool)
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        cin = in_channels
        for level, width in enumerate(self.widths):
            self.encoders.append(conv_block(cin, width, groups, dropout if level else 0.0, conv))
            cin = width
        for level, factor in enumerate(self.pool):
            self.pools.append(nn.MaxPool3d(factor, stride=factor))
            fine, coarse = self.widths[level], self.widths[level + 1]
            self.ups.append(nn.ConvTranspose3d(coarse, fine, factor, stride=factor))
            self.decoders.append(conv_block(2 * fine, fine, groups, dropout, conv))

    @property
    def out_channels(self) -> int:
        """Return the number of feature channels of the output."""
        return self.widths[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return features (B, widths[0], Z, Y, X) float32 of x (B, C, Z, Y, X) float32."""
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x)
            if level < len(self.pools):
                skips.append(x)
                x = self.pools[level](x)
        for level in reversed(range(len(self.pools))):
            x = self.ups[level](x)
            x = self.decoders[level](torch.cat([skips[level], x], dim=1))
        return x

    def divisor(self) -> Triple:
        """Return the per-axis factor every input size must be divisible by."""
        return pool_divisor(self.pool)

    def context(self) -> Triple:
        """Return an upper bound of the receptive-field radius per axis, in voxels."""
        return receptive_radius(self.pool)


def pool_divisor(pool: Sequence[Sequence[int]]) -> Triple:
    """Return the per-axis product of the pooling factors."""
    total = [1, 1, 1]
    for factor in pool:
        total = [t * f for t, f in zip(total, factor, strict=True)]
    return total[0], total[1], total[2]


def receptive_radius(pool: Sequence[Sequence[int]]) -> Triple:
    """Return how far (voxels per axis) an output voxel of the U-Net can see, an upper bound.

    Each level adds two 3x3x3 convs on the way down and two on the way up at its scale; each
    pooling and each up-convolution can shift the window by (factor - 1) voxels of its scale.
    """
    radius = [0, 0, 0]
    scale = [1, 1, 1]
    for factor in pool:
        radius = [
            r + 4 * s + 2 * (f - 1) * s for r, s, f in zip(radius, scale, factor, strict=True)
        ]
        scale = [s * f for s, f in zip(scale, factor, strict=True)]
    radius = [r + 2 * s for r, s in zip(radius, scale, strict=True)]
    return radius[0], radius[1], radius[2]
