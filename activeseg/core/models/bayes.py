"""Bayes by Backprop (Blundell et al. 2015): every convolution weight is a Gaussian.

Each weight w has a mean and a standard deviation softplus(rho). While training, outputs are
sampled with the local reparameterization trick (Kingma et al. 2015): the output of a
convolution with Gaussian weights is Gaussian per activation, with mean conv(x, mu) and
variance conv(x^2, sigma^2), so one draw per activation replaces one draw per weight and the
gradient's variance falls. At test time whole weight tensors are drawn instead, from torch's
seeded generator: one consistent network per sample across every tile of a volume (an
activation-level draw would differ between the overlapping margins of two tiles).
The KL divergence to a zero-mean Gaussian prior is closed-form.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from activeseg.config import ModelConfig
from activeseg.core.models.heads import HeadOutput
from activeseg.core.models.net import Box, SegmentationNet, seeded, stack

# softplus(-6) = 0.0025: weights start almost deterministic, as a trained network's would be.
INITIAL_RHO = -6.0
_EPS = 1e-12


class BayesConv3d(nn.Conv3d):
    """A Conv3d with Gaussian weights: mean ``weight`` / ``bias``, std softplus of ``*_rho``.

    Training: local reparameterization. Eval: the mean weights, or with ``sampling`` set, one
    draw of every weight per forward pass.
    """

    bias: torch.Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        prior_sigma: float = 0.1,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)
        self.prior_sigma = prior_sigma
        self.weight_rho = nn.Parameter(torch.full_like(self.weight, INITIAL_RHO))
        self.bias_rho = nn.Parameter(torch.full_like(self.bias, INITIAL_RHO))
        self.sampling = False

    def sigmas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the standard deviations of the weight and the bias."""
        return F.softplus(self.weight_rho), F.softplus(self.bias_rho)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the convolution of x (B, C, Z, Y, X) with sampled (or mean) weights."""
        weight_sigma, bias_sigma = self.sigmas()
        if self.training:
            mean = self._conv_forward(x, self.weight, self.bias)
            var = self._conv_forward(x * x, weight_sigma**2, bias_sigma**2)
            return mean + torch.sqrt(var.clamp_min(_EPS)) * torch.randn_like(mean)
        if self.sampling:
            weight = self.weight + weight_sigma * torch.randn_like(self.weight)
            bias = self.bias + bias_sigma * torch.randn_like(self.bias)
            return self._conv_forward(x, weight, bias)
        return super().forward(x)

    def kl_divergence(self) -> torch.Tensor:
        """Return the summed KL(q || prior) of every weight and bias to N(0, prior_sigma^2)."""
        total = self.weight.new_zeros(())
        for mean, sigma in zip((self.weight, self.bias), self.sigmas(), strict=True):
            total = total + gaussian_kl(mean, sigma, self.prior_sigma).sum()
        return total

    def parameter_count(self) -> int:
        """Return how many weights and biases have a posterior (half the parameters)."""
        return self.weight.numel() + self.bias.numel()


def gaussian_kl(mean: torch.Tensor, sigma: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """Return elementwise KL(N(mean, sigma^2) || N(0, prior_sigma^2)), in nats."""
    ratio = (sigma / prior_sigma) ** 2
    return 0.5 * (ratio + (mean / prior_sigma) ** 2 - 1.0 - torch.log(ratio))


class BayesNet(SegmentationNet):
    """A SegmentationNet whose convolutions (U-Net and head; not the up-convolutions) are
    variational; each of ``draws`` test samples is one draw of all weights."""

    def __init__(self, config: ModelConfig, draws: int) -> None:
        conv = partial(BayesConv3d, prior_sigma=config.prior_sigma)
        super().__init__(config, heads=1, dropout=0.0, draws=draws, conv=conv)

    def layers(self) -> list[BayesConv3d]:
        """Return the variational convolutions."""
        return [m for m in self.modules() if isinstance(m, BayesConv3d)]

    def kl_divergence(self) -> torch.Tensor:
        """Return the mean KL per variational weight, so kl_weight does not scale with width."""
        layers = self.layers()
        total = torch.stack([layer.kl_divergence() for layer in layers]).sum()
        return total / sum(layer.parameter_count() for layer in layers)

    def sample_outputs(
        self, x: torch.Tensor, seed: int | None = None, keep: Box | None = None
    ) -> HeadOutput:
        """Return ``draws`` outputs (S, B, ...), draw k with all weights drawn from seed + k."""
        passes = []
        with self.sampled_weights():
            for k in range(self.draws):
                with seeded(None if seed is None else seed + k):
                    passes.append(self.all_heads(x, keep))
        return stack(passes)

    @contextmanager
    def sampled_weights(self) -> Iterator[None]:
        """Within the block, eval passes draw their weights instead of taking the means."""
        layers = self.layers()
        for layer in layers:
            layer.sampling = True
        try:
            yield
        finally:
            for layer in layers:
                layer.sampling = False
