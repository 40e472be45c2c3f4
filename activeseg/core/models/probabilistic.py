"""One interface over the probabilistic variants: ``model.sample(x)`` gives S predictions.

- ``single``: one network, one head; S = 1.
- ``mheads``: one backbone, M shake-shake heads; S = M samples from one backbone pass.
- ``ensemble``: K networks initialized from their own seeds (and trained on their own data
  order); S = K passes.
- ``dropout``: one network with channel dropout, kept on at test time; S = K passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from activeseg.config import ModelConfig
from activeseg.core.models.heads import HeadOutput, OutputHeads, random_convex_weights
from activeseg.core.models.unet import Triple, UNet3d
from activeseg.errors import ConfigError

logger = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Samples:
    """S sampled predictions of a batch.

    foreground: (S, B, Z, Y, X) float32 foreground probability.
    embedding: (S, B, E, Z, Y, X) float32.
    aleatoric_var: (S, B, Z, Y, X) float32 variance of the foreground logit, or None.
    """

    foreground: torch.Tensor
    embedding: torch.Tensor
    aleatoric_var: torch.Tensor | None


class SegmentationNet(nn.Module):
    """A U-Net backbone with M output heads (M = 1 for a plain network)."""

    def __init__(self, config: ModelConfig, heads: int, dropout: float) -> None:
        super().__init__()
        if config.in_channels == "auto":
            raise ConfigError(
                "model.in_channels is auto: resolve it from the data (ModelConfig.with_channels)"
            )
        self.backbone = UNet3d(
            config.in_channels, config.widths, config.pool, config.groups, dropout
        )
        self.heads = OutputHeads(
            self.backbone.out_channels, config.embed_dim, heads, config.aleatoric
        )

    def forward(self, x: torch.Tensor) -> HeadOutput:
        """Return the training output (B, ...) of x (B, C, Z, Y, X).

        With M > 1 heads: a shake-shake mix while training, the mean of the heads in eval mode.
        """
        features = self.backbone(x)
        batch, heads = features.shape[0], self.heads.heads
        if heads == 1:
            mixed = self.heads(features)[:, 0]
        elif self.training:
            forward_weights = random_convex_weights(batch, heads, features.device)
            backward_weights = random_convex_weights(batch, heads, features.device)
            mixed = self.heads.shake_shake(features, forward_weights, backward_weights)
        else:
            mean = torch.full((batch, heads), 1 / heads, device=features.device)
            mixed = self.heads.mix(features, mean)
        return self.heads.split(mixed)

    def all_heads(self, x: torch.Tensor, keep: Box | None = None) -> HeadOutput:
        """Return every head's output, (M, B, ...), of x (B, C, Z, Y, X).

        keep: a (z, y, x) box of the input; the heads run on those voxels only.
        """
        features = self.backbone(x)
        if keep is not None:
            features = features[(..., *keep)]
        return self.heads.split(self.heads(features).transpose(0, 1))


class ProbabilisticModel(nn.Module):
    """The model of one config: its member networks and how they are sampled."""

    def __init__(self, config: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.kind = config.kind
        self.n_samples = 1 if config.kind == "single" else config.samples
        n_members = self.n_samples if config.kind == "ensemble" else 1
        heads = self.n_samples if config.kind == "mheads" else 1
        dropout = config.dropout if config.kind == "dropout" else 0.0
        members = []
        for k in range(n_members):
            with _seeded(seed + k):  # every ensemble member starts from its own weights
                members.append(SegmentationNet(config, heads, dropout))
        self.members = nn.ModuleList(members)

    def nets(self) -> list[SegmentationNet]:
        """Return the member networks (K for an ensemble, one otherwise)."""
        return [net for net in self.members if isinstance(net, SegmentationNet)]

    def divisor(self) -> Triple:
        """Return the per-axis factor every input size must be divisible by."""
        return self.nets()[0].backbone.divisor()

    def context(self) -> Triple:
        """Return the receptive-field radius per axis (voxels), an upper bound."""
        return self.nets()[0].backbone.context()

    @torch.no_grad()
    def sample(self, x: torch.Tensor, seed: int | None = None, keep: Box | None = None) -> Samples:
        """Return S samples of the prediction for x (B, C, Z, Y, X) float32, without gradients.

        keep: a (z, y, x) box of slices; only those voxels are returned (tiled inference
        keeps a tile's centre, and the heads then skip the margin). seed fixes the dropout
        masks of the ``dropout`` variant: pass k uses ``seed + k``, so calls on different
        tiles of one volume sample the same K networks.
        """
        was_training = self.training
        self.eval()
        try:
            outputs = self._sample_outputs(x, seed, keep)
        finally:
            self.train(was_training)
        var = None if outputs.log_var is None else torch.exp(outputs.log_var[:, :, 0])
        return Samples(torch.sigmoid(outputs.logit[:, :, 0]), outputs.embedding, var)

    def _sample_outputs(self, x: torch.Tensor, seed: int | None, keep: Box | None) -> HeadOutput:
        nets = self.nets()
        if self.kind == "ensemble":
            return _stack([net.all_heads(x, keep) for net in nets])
        if self.kind == "dropout":
            _enable_dropout(nets[0])
            passes = []
            for k in range(self.n_samples):
                with _seeded(None if seed is None else seed + k):
                    passes.append(nets[0].all_heads(x, keep))
            return _stack(passes)
        return nets[0].all_heads(x, keep)  # single, mheads: every head is a sample


def _stack(outputs: list[HeadOutput]) -> HeadOutput:
    """Return the outputs (1, B, ...) of several passes concatenated along the sample axis."""
    log_vars = [o.log_var for o in outputs if o.log_var is not None]
    return HeadOutput(
        torch.cat([o.embedding for o in outputs]),
        torch.cat([o.logit for o in outputs]),
        torch.cat(log_vars) if log_vars else None,
    )


def _enable_dropout(net: nn.Module) -> None:
    for module in net.modules():
        if isinstance(module, nn.Dropout3d):
            module.train()


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the block with torch's global RNG seeded (and restored after); None = untouched."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
