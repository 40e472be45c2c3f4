"""The probabilistic U-Net (Kohl et al. 2018): a latent Gaussian injected before the last layers.

A prior net sees the image and gives a Gaussian over a small latent space; a posterior net
sees the image and its labels. While training, a latent drawn from the posterior is tiled over
the U-Net's output features and mixed in by 1x1x1 convolutions before the heads, and the loss
adds KL(posterior || prior); at test time each sample draws its latent from the prior.

The labels the posterior sees are two channels: annotated foreground and annotated voxels
(instance ids are arbitrary numbers, so they are not shown). The latent is one vector per
input (a tile, when a volume is predicted tile by tile): draws are seeded, so every tile uses
the same standard-normal noise, but each tile's prior has its own mean and spread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn
from torch.distributions import Normal, kl_divergence

from activeseg.config import ModelConfig
from activeseg.core.models.heads import HeadOutput
from activeseg.core.models.losses import Target
from activeseg.core.models.net import Box, SegmentationNet, seeded, stack
from activeseg.core.models.unet import Triple

# Label channels the posterior sees: annotated foreground, annotated.
LABEL_CHANNELS = 2


class LatentEncoder(nn.Module):
    """A small convolutional encoder: input (B, C, Z, Y, X) → a diagonal Gaussian (B, L)."""

    def __init__(
        self, in_channels: int, widths: Sequence[int], pool: Sequence[Triple], groups: int,
        latent: int,
    ) -> None:  # fmt: skip
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for level, width in enumerate(widths):
            layers += [
                nn.Conv3d(cin, width, 3, padding=1),
                nn.GroupNorm(min(groups, width), width),
                nn.ReLU(inplace=True),
            ]
            if level < len(pool):
                layers.append(nn.MaxPool3d(pool[level], stride=pool[level]))
            cin = width
        self.features = nn.Sequential(*layers)
        self.out = nn.Conv3d(cin, 2 * latent, 1)

    def forward(self, x: torch.Tensor) -> Normal:
        """Return the Gaussian (batch shape (B, L)) the encoder gives x."""
        pooled = self.features(x).mean(dim=(2, 3, 4), keepdim=True)
        mean, log_sigma = self.out(pooled).flatten(1).chunk(2, dim=1)
        return Normal(mean, torch.exp(log_sigma.clamp(-10.0, 5.0)))


class ProbUNet(SegmentationNet):
    """A SegmentationNet with a prior and a posterior latent net, the latent mixed into its
    output features; ``draws`` test samples each draw one latent from the prior."""

    def __init__(self, config: ModelConfig, draws: int) -> None:
        super().__init__(config, heads=1, dropout=0.0, draws=draws)
        channels = cast(int, config.in_channels)  # SegmentationNet refused "auto"
        latent, groups = config.latent_dim, config.groups
        self.prior = LatentEncoder(channels, config.widths, config.pool, groups, latent)
        self.posterior = LatentEncoder(
            channels + LABEL_CHANNELS, config.widths, config.pool, groups, latent
        )
        features = self.backbone.out_channels
        self.combine = nn.Sequential(
            nn.Conv3d(features + latent, features, 1),
            nn.ReLU(inplace=True),
            nn.Conv3d(features, features, 1),
            nn.ReLU(inplace=True),
        )
        self._kl: torch.Tensor | None = None

    def posterior_of(self, x: torch.Tensor, target: Target) -> Normal:
        """Return the posterior latent Gaussian of x (B, C, Z, Y, X) and its labels."""
        return self.posterior(torch.cat([x, label_channels(target, x.dtype)], dim=1))

    def forward(self, x: torch.Tensor, target: Target | None = None) -> HeadOutput:
        """Return the training output (B, ...): the latent drawn from the posterior given the
        target (and the KL to the prior kept for ``kl_divergence``), else from the prior."""
        features = self.backbone(x)
        prior = self.prior(x)
        if target is None:
            latent = prior.rsample() if self.training else prior.mean
            self._kl = None
        else:
            posterior = self.posterior_of(x, target)
            latent = posterior.rsample()
            self._kl = kl_divergence(posterior, prior).sum(dim=1).mean()
        return self.mixed_heads(self.inject(features, latent))

    def inject(self, features: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Return features (B, F, Z, Y, X) combined with latent (B, L) tiled over every voxel."""
        tiled = latent[:, :, None, None, None].expand(-1, -1, *features.shape[2:])
        return self.combine(torch.cat([features, tiled.to(features.dtype)], dim=1))

    def kl_divergence(self) -> torch.Tensor:
        """Return KL(posterior || prior) of the last training pass, per input (0 without one)."""
        return self._kl if self._kl is not None else super().kl_divergence()

    def sample_outputs(
        self, x: torch.Tensor, seed: int | None = None, keep: Box | None = None
    ) -> HeadOutput:
        """Return ``draws`` outputs (S, B, ...), draw k with its latent from the prior drawn
        with seed + k."""
        features = self.backbone(x)
        if keep is not None:
            features = features[(..., *keep)]
        prior = self.prior(x)
        outputs = []
        for k in range(self.draws):
            with seeded(None if seed is None else seed + k):
                noise = torch.randn(prior.mean.shape, device=x.device)
            latent = prior.mean + prior.stddev * noise
            outputs.append(self.heads_of(self.inject(features, latent)))
        return stack(outputs)


def label_channels(target: Target, dtype: torch.dtype) -> torch.Tensor:
    """Return (B, 2, Z, Y, X) channels of a target: annotated foreground, annotated."""
    foreground = (target.labels > 0) & target.mask
    return torch.stack([foreground, target.mask], dim=1).to(dtype)
