"""Training losses: the discriminative embedding loss and a masked foreground loss.

Labels are sparse: only voxels where ``mask`` is True were annotated, and every term here is
computed on those voxels alone. Voxels shared by two neurons (``overlap``) have no single
instance, so they are left out of the embedding terms (they still count as foreground).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from activeseg.config import LossConfig
from activeseg.core.models.heads import HeadOutput, embedding_scale

# Logit samples per voxel for the aleatoric loss (Kendall & Gal 2017 use tens; 8 suffices here).
ALEATORIC_SAMPLES = 8
# Class balancing never weighs a foreground voxel more than this many background voxels.
MAX_POS_WEIGHT = 100.0
_EPS = 1e-8


@dataclass(frozen=True)
class LossTerms:
    """The loss of one batch and its parts, all scalar tensors (total carries the gradient)."""

    total: torch.Tensor
    pull: torch.Tensor
    push: torch.Tensor
    reg: torch.Tensor
    foreground: torch.Tensor
    mask: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """Return every term as a plain float, keyed by name."""
        names = ("total", "pull", "push", "reg", "foreground", "mask")
        return {name: float(getattr(self, name).detach()) for name in names}


@dataclass(frozen=True)
class Target:
    """Annotations of a batch, each (B, Z, Y, X).

    labels: int64 instance ids, 0 = background. mask: bool, annotated voxels.
    overlap: bool, voxels that belong to two or more instances.
    """

    labels: torch.Tensor
    mask: torch.Tensor
    overlap: torch.Tensor


def segmentation_loss(output: HeadOutput, target: Target, config: LossConfig) -> LossTerms:
    """Return the weighted sum of discriminative and foreground losses for one batch."""
    pull, push, reg = discriminative_loss(
        output.embedding, target, config.delta_v, config.delta_d, scale=output.scale
    )
    fg = foreground_loss(
        output.logit[:, 0],
        target,
        output.log_var[:, 0] if output.log_var is not None else None,
        dice=config.foreground_dice,
    )
    total = (
        config.w_pull * pull + config.w_push * push + config.w_reg * reg + config.w_foreground * fg
    )
    mask = instance_mask_loss(output.embedding, target, config.delta_v) if config.w_mask else fg * 0
    total = total + config.w_mask * mask
    return LossTerms(total, pull, push, reg, fg, mask)


def discriminative_loss(
    embedding: torch.Tensor,
    target: Target,
    delta_v: float,
    delta_d: float,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (pull, push, reg) of De Brabandere et al. 2017 on annotated neuron voxels,
    averaged over the batch.

    embedding: (B, E, Z, Y, X) float. Pull: squared hinge (distance to the instance mean beyond
    delta_v), averaged per instance, then over instances. Push: squared hinge (2 delta_d minus
    the distance between two instance means), averaged over pairs. Reg: mean norm of the means.
    scale: (B, 1, Z, Y, X) raw aleatoric scale of the embedding, or None; with it the pull is
    attenuated (``attenuated_pull``).
    """
    terms = []
    for b in range(embedding.shape[0]):
        emb, ids = _annotated_voxels(embedding[b], target, b, with_background=False)
        voxel_scale = None
        if scale is not None:
            voxel_scale, _ = _annotated_voxels(scale[b], target, b, with_background=False)
        if ids.numel():
            terms.append(_instance_terms(emb, ids, delta_v, delta_d, voxel_scale))
    if not terms:
        zero = embedding.sum() * 0.0  # keeps the graph, so backward() works on empty batches
        return zero, zero, zero
    pull, push, reg = (torch.stack(parts).mean() for parts in zip(*terms, strict=True))
    return pull, push, reg


def instance_mask_loss(embedding: torch.Tensor, target: Target, sigma: float) -> torch.Tensor:
    """Return 1 - soft Dice of each neuron's Gaussian-kernel mask, averaged over neurons.

    A neuron's soft mask gives every annotated voxel exp(-d^2 / 2 sigma^2), d its distance to
    the neuron's mean embedding: what Gaussian mean shift with bandwidth sigma gathers around
    that mode. Unlike the push between means, voxels of a touching neuron that reach into the
    mask are penalized one by one (after the instance loss of Wolny et al. 2022). Background
    voxels count against every mask: without them the foreground head, which shares the
    features, predicted far too much foreground (see BENCHMARKS.md, Session 9).
    """
    losses = []
    for b in range(embedding.shape[0]):
        emb, ids = _annotated_voxels(embedding[b], target, b, with_background=True)
        neurons = ids > 0
        if not bool(neurons.any()):
            continue
        inverse, counts, means = _instance_means(emb[neurons], ids[neurons])
        n = counts.numel()
        soft = torch.exp(-(torch.cdist(emb, means) ** 2) / (2 * sigma**2))  # (N, n)
        truth = torch.zeros_like(soft)
        truth[neurons] = F.one_hot(inverse, n).to(soft.dtype)
        overlap, predicted, true = (m.sum(0) for m in (soft * truth, soft, truth))
        dice = (2 * overlap + 1) / (predicted + true + 1)
        losses.append((1 - dice).mean())
    return torch.stack(losses).mean() if losses else embedding.sum() * 0.0


def _annotated_voxels(
    embedding: torch.Tensor,
    target: Target,
    b: int,
    *,
    with_background: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ((N, E) embeddings, (N,) labels) of batch item b's annotated voxels outside
    overlaps: its neurons' voxels, and with_background its background voxels too."""
    labels = target.labels[b]
    annotated = target.mask[b] & ~target.overlap[b]
    neurons = annotated & (labels > 0)
    # Background alone is no clustering problem: it joins only when a neuron is there.
    keep = annotated if with_background and bool(neurons.any()) else neurons
    index = keep.flatten().nonzero()[:, 0]
    return embedding.flatten(1)[:, index].T, labels.flatten()[index]


def _instance_terms(
    emb: torch.Tensor,
    labels: torch.Tensor,
    delta_v: float,
    delta_d: float,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (pull, push, reg) of embeddings (N, E) grouped by labels (N,); scale: (N, 1)
    raw aleatoric scales, or None."""
    inverse, counts, means = _instance_means(emb, labels)
    n = counts.numel()
    spread = _norm(emb - means[inverse])
    per_voxel = F.relu(spread - delta_v) ** 2
    if scale is not None:
        per_voxel = attenuated_pull(per_voxel, embedding_scale(scale[:, 0]))
    pull = (emb.new_zeros(n).index_add_(0, inverse, per_voxel) / counts).mean()
    if n > 1:
        first, second = torch.triu_indices(n, n, offset=1, device=emb.device)
        gaps = _norm(means[first] - means[second])
        push = (F.relu(2 * delta_d - gaps) ** 2).mean()
    else:
        push = emb.sum() * 0.0
    reg = _norm(means).mean()
    return pull, push, reg


def attenuated_pull(squared_hinge: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Return the pull per voxel attenuated by its aleatoric scale (all shapes (N,)).

    The squared hinge h is taken as the squared residual of a Gaussian with variance b, the
    voxel's scale (Kendall & Gal 2017, eq. 8, up to constants): h / b + log b. A voxel whose
    embedding the network cannot place (noise, a dim gap) is pulled less, at the cost of log b;
    the best b is h, floored at 1 (``heads.embedding_scale``), so the pull is never amplified
    and a voxel within the margin (h = 0) gets b = 1 and costs nothing.
    """
    return squared_hinge / scale + torch.log(scale)


def _instance_means(
    emb: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (inverse (N,), counts (n,), means (n, E)) of embeddings (N, E) grouped by labels:
    inverse[i] is voxel i's instance among the n in labels."""
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    means = emb.new_zeros(counts.numel(), emb.shape[1]).index_add_(0, inverse, emb)
    return inverse, counts, means / counts[:, None]


def _norm(vectors: torch.Tensor) -> torch.Tensor:
    """Return the L2 norms of (N, E) vectors, with a finite gradient at zero."""
    return torch.sqrt((vectors**2).sum(dim=1) + _EPS)


def foreground_loss(
    logit: torch.Tensor,
    target: Target,
    log_var: torch.Tensor | None = None,
    *,
    dice: bool = True,
) -> torch.Tensor:
    """Return the class-balanced BCE (+ soft Dice) of logit (B, Z, Y, X) on annotated voxels.

    Foreground voxels weigh background/foreground counts of the batch (capped at
    MAX_POS_WEIGHT); the BCE is normalized by the total weight. With log_var (B, Z, Y, X)
    the BCE is the aleatoric loss of Kendall & Gal 2017 on sampled logits.
    """
    mask = target.mask
    if not bool(mask.any()):
        return logit.sum() * 0.0
    truth = (target.labels > 0).to(logit.dtype)
    logit_m, truth_m = logit[mask], truth[mask]
    weight = _class_weights(truth_m)
    if log_var is None:
        bce = F.binary_cross_entropy_with_logits(logit_m, truth_m, reduction="none")
    else:
        bce = attenuated_bce(logit_m, log_var[mask], truth_m)
    loss = (weight * bce).sum() / weight.sum()
    if dice:
        loss = loss + soft_dice_loss(torch.sigmoid(logit_m), truth_m)
    return loss


def _class_weights(truth: torch.Tensor) -> torch.Tensor:
    """Return a weight per voxel: 1 for background (truth 0), and for foreground the ratio of
    background to foreground voxels, within 1 and MAX_POS_WEIGHT."""
    positives = float(truth.sum())
    negatives = float(truth.numel()) - positives
    pos_weight = min(negatives / positives, MAX_POS_WEIGHT) if positives else 1.0
    pos_weight = max(pos_weight, 1.0)
    return 1.0 + (pos_weight - 1.0) * truth


def attenuated_bce(logit: torch.Tensor, log_var: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Return -log of the mean likelihood over sampled logits, per voxel (all shapes (N,)).

    The logit is taken as Gaussian with variance exp(log_var) (Kendall & Gal 2017, eq. 12):
    voxels the network declares noisy are penalized less, at the cost of the variance.
    """
    std = torch.exp(0.5 * log_var)
    noise = torch.randn((ALEATORIC_SAMPLES, *logit.shape), device=logit.device)
    sampled = logit + std * noise
    log_likelihood = -F.binary_cross_entropy_with_logits(
        sampled, truth.expand_as(sampled), reduction="none"
    )
    return -(torch.logsumexp(log_likelihood, dim=0) - math.log(ALEATORIC_SAMPLES))


def soft_dice_loss(probability: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Return 1 - soft Dice of probabilities (N,) against a binary truth (N,), smoothed by 1."""
    overlap = (probability * truth).sum()
    return 1.0 - (2.0 * overlap + 1.0) / (probability.sum() + truth.sum() + 1.0)
