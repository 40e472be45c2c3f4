"""One interface over the probabilistic variants: ``model.sample(x)`` gives S predictions.

Every model is ``members`` independently initialized networks of one kind (an ensemble of
probabilistic models when members > 1), each giving ``draws`` samples; S = members x draws:

- ``single``: one network, one head; 1 draw.
- ``mheads``: one backbone, M heads (shake-shake or not); the M heads, or with sampler "shake"
  ``samples`` random convex mixes of them.
- ``ensemble``: K = ``samples`` single networks (the same as kind single with members K).
- ``dropout``: channel dropout, kept on at test time; ``samples`` passes.
- ``bbb``: Bayes by Backprop, variational weights; ``samples`` weight draws.
- ``probunet``: probabilistic U-Net; ``samples`` latent draws from the prior.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from activeseg.config import ModelConfig
from activeseg.core.models.bayes import BayesNet
from activeseg.core.models.heads import HeadOutput, embedding_scale
from activeseg.core.models.net import Box, SegmentationNet, seeded, stack
from activeseg.core.models.probunet import ProbUNet
from activeseg.core.models.unet import Triple

logger = logging.getLogger(__name__)

__all__ = ["ProbabilisticModel", "Samples", "SegmentationNet", "member_net"]


@dataclass(frozen=True)
class Samples:
    """S sampled predictions of a batch.

    foreground: (S, B, Z, Y, X) float32 foreground probability.
    embedding: (S, B, E, Z, Y, X) float32.
    aleatoric_var: (S, B, Z, Y, X) float32 variance of the foreground logit, or None.
    embedding_scale: (S, B, Z, Y, X) float32 aleatoric scale (>= 1) of the embedding's pull
      towards its instance (``heads.embedding_scale``), or None.
    """

    foreground: torch.Tensor
    embedding: torch.Tensor
    aleatoric_var: torch.Tensor | None
    embedding_scale: torch.Tensor | None = None


def member_net(config: ModelConfig) -> SegmentationNet:
    """Return one member network of the config's kind."""
    draws = config.samples
    if config.kind == "bbb":
        return BayesNet(config, draws)
    if config.kind == "probunet":
        return ProbUNet(config, draws)
    if config.kind == "mheads":
        heads = (config.heads or config.samples) if config.sampler == "shake" else config.samples
        return SegmentationNet(config, heads, 0.0, draws=draws)
    if config.kind == "dropout":
        return SegmentationNet(config, 1, config.dropout, draws=draws)
    return SegmentationNet(config, 1, 0.0)  # single, and each member of an ensemble


class ProbabilisticModel(nn.Module):
    """The model of one config: its member networks and how they are sampled."""

    def __init__(self, config: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.kind = config.kind
        members = []
        for k in range(config.embedding_spaces):
            with seeded(seed + k):  # every member starts from its own weights
                members.append(member_net(config))
        self.members = nn.ModuleList(members)
        self.draws = members[0].draws
        self.n_members = len(members)
        self.n_samples = self.n_members * self.draws

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

        Samples come member by member (member k's ``draws`` samples are k * draws onwards).
        keep: a (z, y, x) box of slices; only those voxels are returned (tiled inference
        keeps a tile's centre, and the heads then skip the margin). seed fixes the random
        draws (dropout masks, weights, latents, head mixes): draw j of member k uses
        ``seed + k * draws + j``, so calls on different tiles of one volume sample the same
        S networks.
        """
        was_training = self.training
        self.eval()
        try:
            outputs = stack(
                [
                    net.sample_outputs(x, None if seed is None else seed + k * self.draws, keep)
                    for k, net in enumerate(self.nets())
                ]
            )
        finally:
            self.train(was_training)
        return samples_of(outputs)


def samples_of(outputs: HeadOutput) -> Samples:
    """Return the probabilities and variances of raw sampled outputs (S, B, ...)."""
    var = None if outputs.log_var is None else torch.exp(outputs.log_var[:, :, 0])
    scale = None if outputs.scale is None else embedding_scale(outputs.scale[:, :, 0])
    return Samples(torch.sigmoid(outputs.logit[:, :, 0]), outputs.embedding, var, scale)
