"""Per-voxel output heads: embedding, foreground logit, optional aleatoric scales.

M heads share one backbone (the M-heads U-Net of Kohl et al. 2018). While training, their
outputs are mixed with shake-shake regularization (Gastaldi 2017): the forward pass uses one
random convex combination of the heads and the backward pass another, so each head receives a
differently scaled, noisy gradient and the heads decorrelate. At test time every head is one
sample of the prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn


@dataclass(frozen=True)
class HeadOutput:
    """What a network predicts per voxel; a leading sample axis S is optional.

    embedding: ([S,] B, E, Z, Y, X) float32.
    logit: ([S,] B, 1, Z, Y, X) float32 foreground logit.
    log_var: ([S,] B, 1, Z, Y, X) float32 aleatoric log-variance of the logit, or None.
    scale: ([S,] B, 1, Z, Y, X) float32 raw aleatoric scale of the embedding (see
      ``embedding_scale``), or None.
    """

    embedding: torch.Tensor
    logit: torch.Tensor
    log_var: torch.Tensor | None
    scale: torch.Tensor | None = None

    def float(self) -> HeadOutput:
        """Return the outputs as float32 (losses are computed in full precision)."""
        log_var = None if self.log_var is None else self.log_var.float()
        scale = None if self.scale is None else self.scale.float()
        return HeadOutput(self.embedding.float(), self.logit.float(), log_var, scale)


def embedding_scale(raw: torch.Tensor) -> torch.Tensor:
    """Return the embedding's aleatoric scale b = 1 + softplus(raw), >= 1, of raw head output.

    b scales the pull of a voxel towards its instance (``losses.attenuated_pull``); the floor
    of 1 keeps the attenuated pull from ever exceeding the plain one.
    """
    return 1.0 + torch.nn.functional.softplus(raw)


class OutputHeads(nn.Module):
    """M parallel heads, each a 1x1x1 conv: the U-Net's last layer copied M times.

    (A hidden layer per head made the M heads cost far more than the shared network; what the
    linear heads cost is in BENCHMARKS.md's summary table.) The heads are linear, so a mix of
    their outputs is the output of one head with mixed parameters: training mixes parameters,
    which costs one head instead of M (see BENCHMARKS.md, Session 14).
    """

    out: nn.Conv3d

    def __init__(
        self,
        features: int,
        embed_dim: int,
        heads: int,
        aleatoric: bool,
        conv: Callable[..., nn.Conv3d] = nn.Conv3d,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.embed_dim = embed_dim
        self.aleatoric = aleatoric
        self.channels = embed_dim + 1 + 2 * int(aleatoric)
        self.out = conv(features, heads * self.channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return raw outputs (B, M, K, Z, Y, X) of features (B, F, Z, Y, X); K = E + 1 [+ 2]."""
        return self.out(features).unflatten(1, (self.heads, self.channels))

    def mix(self, features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Return sum_m w_m h_m (B, K, Z, Y, X): the heads' raw outputs of features
        (B, F, Z, Y, X) mixed per batch item with weights (B, M)."""
        per_head = self.out.weight.view(self.heads, self.channels, -1)  # (M, K, F)
        weight = torch.einsum("bm,mkf->bkf", weights, per_head)
        bias = weights @ cast(torch.Tensor, self.out.bias).view(self.heads, self.channels)
        out = torch.baddbmm(bias.unsqueeze(-1), weight, features.flatten(2))
        return out.view(out.shape[:2] + features.shape[2:])

    def shake_shake(
        self, features: torch.Tensor, forward_weights: torch.Tensor, backward_weights: torch.Tensor
    ) -> torch.Tensor:
        """Return the heads mixed with forward_weights, whose gradient flows as if they were
        mixed with backward_weights (B, M): head m's parameters get b_m times the gradient of
        the mix (the shake-shake "detach trick"; the mix is linear in the weights)."""
        with torch.no_grad():
            shift = self.mix(features, forward_weights - backward_weights)
        return self.mix(features, backward_weights) + shift

    def split(self, raw: torch.Tensor) -> HeadOutput:
        """Return the named parts of raw outputs (..., K, Z, Y, X) along the channel axis -4."""
        e = self.embed_dim
        if not self.aleatoric:
            return HeadOutput(raw[..., :e, :, :, :], raw[..., e : e + 1, :, :, :], None)
        return HeadOutput(
            raw[..., :e, :, :, :],
            raw[..., e : e + 1, :, :, :],
            raw[..., e + 1 : e + 2, :, :, :],
            raw[..., e + 2 : e + 3, :, :, :],
        )


def random_convex_weights(batch: int, heads: int, device: torch.device) -> torch.Tensor:
    """Return (batch, heads) float32 weights drawn uniformly from the simplex (Dirichlet(1))."""
    draws = -torch.log1p(-torch.rand(batch, heads, device=device))
    return draws / draws.sum(dim=1, keepdim=True)
