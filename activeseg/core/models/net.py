"""One member network: a U-Net backbone with M output heads, trained and sampled.

``SegmentationNet`` covers the single network, M heads (shake-shake or not, sampled head by
head or by random mixes) and MC dropout; ``bayes.BayesNet`` and ``probunet.ProbUNet`` extend
it. Every member network offers the same three things: ``forward`` (the training output),
``sample_outputs`` (S samples at test time) and ``kl_divergence`` (its KL term, zero here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from activeseg.config import ModelConfig
from activeseg.core.models.heads import HeadOutput, OutputHeads, random_convex_weights
from activeseg.core.models.unet import ConvFactory, UNet3d
from activeseg.errors import ConfigError

if TYPE_CHECKING:
    from activeseg.core.models.losses import Target

Box = tuple[slice, slice, slice]


class SegmentationNet(nn.Module):
    """A U-Net backbone with M output heads (M = 1 for a plain network).

    draws: samples at test time. With M > 1 heads and sampler "heads" every head is one
    sample (draws = M); with sampler "shake" each sample is a random convex mix of the heads.
    With dropout > 0 each sample is one pass with its own dropout masks.
    """

    def __init__(
        self,
        config: ModelConfig,
        heads: int,
        dropout: float,
        draws: int | None = None,
        conv: ConvFactory = nn.Conv3d,
    ) -> None:
        super().__init__()
        if config.in_channels == "auto":
            raise ConfigError(
                "model.in_channels is auto: resolve it from the data (ModelConfig.with_channels)"
            )
        self.backbone = UNet3d(
            config.in_channels, config.widths, config.pool, config.groups, dropout, conv
        )
        self.heads = self._make_heads(config, heads, conv)
        self.shake = config.shake_shake
        self.mix_heads = heads > 1 and config.sampler == "shake"
        self.mc_dropout = dropout > 0
        self.draws = draws if draws is not None else heads

    def _make_heads(self, config: ModelConfig, heads: int, conv: ConvFactory) -> OutputHeads:
        head_conv = cast(Callable[..., nn.Conv3d], conv)
        features = self.backbone.out_channels
        return OutputHeads(features, config.embed_dim, heads, config.aleatoric, head_conv)

    def forward(self, x: torch.Tensor, target: Target | None = None) -> HeadOutput:
        """Return the training output (B, ...) of x (B, C, Z, Y, X); target is unused here.

        With M > 1 heads while training: a shake-shake mix (one random convex draw forward,
        another backward), or without shake-shake one draw used both ways; in eval mode the
        mean of the heads.
        """
        return self.mixed_heads(self.backbone(x))

    def mixed_heads(self, features: torch.Tensor) -> HeadOutput:
        """Return the heads' output of features (B, F, Z, Y, X), mixed as ``forward`` says."""
        batch, heads = features.shape[0], self.heads.heads
        if heads == 1:
            mixed = self.heads(features)[:, 0]
        elif self.training:
            forward_weights = random_convex_weights(batch, heads, features.device)
            if self.shake:
                backward_weights = random_convex_weights(batch, heads, features.device)
                mixed = self.heads.shake_shake(features, forward_weights, backward_weights)
            else:
                mixed = self.heads.mix(features, forward_weights)
        else:
            mean = torch.full((batch, heads), 1 / heads, device=features.device)
            mixed = self.heads.mix(features, mean)
        return self.heads.split(mixed)

    def all_heads(self, x: torch.Tensor, keep: Box | None = None) -> HeadOutput:
        """Return every head's output, (M, B, ...), of x (B, C, Z, Y, X).

        keep: a (z, y, x) box of the input; the heads run on those voxels only.
        """
        return self.heads_of(_kept(self.backbone(x), keep))

    def heads_of(self, features: torch.Tensor) -> HeadOutput:
        """Return every head's output (M, B, ...) of features (B, F, Z, Y, X)."""
        return self.heads.split(self.heads(features).transpose(0, 1))

    def sample_outputs(
        self, x: torch.Tensor, seed: int | None = None, keep: Box | None = None
    ) -> HeadOutput:
        """Return ``draws`` sampled outputs (S, B, ...) of x (B, C, Z, Y, X), in eval mode.

        seed: draw k uses seed + k (dropout masks, head mixes), so calls on different tiles of
        one volume sample the same S networks.
        """
        if self.mc_dropout:
            enable_dropout(self)
            return stack([self._seeded_pass(x, seed, k, keep) for k in range(self.draws)])
        if self.mix_heads:
            return self._shake_draws(_kept(self.backbone(x), keep), seed)
        return self.all_heads(x, keep)

    def _seeded_pass(
        self, x: torch.Tensor, seed: int | None, k: int, keep: Box | None
    ) -> HeadOutput:
        with seeded(None if seed is None else seed + k):
            return self.all_heads(x, keep)

    def _shake_draws(self, features: torch.Tensor, seed: int | None) -> HeadOutput:
        """Return ``draws`` random convex mixes of the heads (S, B, ...) of features."""
        batch, outputs = features.shape[0], []
        for k in range(self.draws):
            with seeded(None if seed is None else seed + k):
                weights = random_convex_weights(1, self.heads.heads, features.device)
            mixed = self.heads.mix(features, weights.expand(batch, -1))
            outputs.append(self.heads.split(mixed[None]))
        return stack(outputs)

    def kl_divergence(self) -> torch.Tensor:
        """Return the KL term of the last training pass: none for a plain network."""
        return self.heads.out.weight.new_zeros(())


def _kept(features: torch.Tensor, keep: Box | None) -> torch.Tensor:
    return features if keep is None else features[(..., *keep)]


def stack(outputs: list[HeadOutput]) -> HeadOutput:
    """Return outputs (S_i, B, ...) of several passes concatenated along the sample axis."""
    log_vars = [o.log_var for o in outputs if o.log_var is not None]
    scales = [o.scale for o in outputs if o.scale is not None]
    return HeadOutput(
        torch.cat([o.embedding for o in outputs]),
        torch.cat([o.logit for o in outputs]),
        torch.cat(log_vars) if log_vars else None,
        torch.cat(scales) if scales else None,
    )


def enable_dropout(net: nn.Module) -> None:
    """Put net's dropout layers in training mode (MC dropout), leaving the rest as it is."""
    for module in net.modules():
        if isinstance(module, nn.Dropout3d):
            module.train()


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's global RNG seeded (and restored after); None = untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
