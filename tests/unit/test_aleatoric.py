"""Aleatoric uncertainty of the instance segmentation: the embedding's predicted scale, its
attenuated pull, and the split of total uncertainty into aleatoric and epistemic parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activeseg.core.models.heads import embedding_scale
from activeseg.core.models.losses import Target, attenuated_pull, discriminative_loss
from activeseg.core.uncertainty import decompose, instance_means


def test_attenuated_pull_is_the_plain_pull_at_the_floor_and_less_when_scaled_up() -> None:
    hinge = torch.tensor([0.0, 0.5, 4.0])
    assert torch.allclose(attenuated_pull(hinge, torch.ones(3)), hinge)
    scaled = attenuated_pull(hinge, torch.full((3,), 4.0))
    assert float(scaled[2]) < float(hinge[2])  # 4 / 4 + log 4 = 2.39 < 4
    assert float(embedding_scale(torch.tensor(-30.0))) == pytest.approx(1.0)


def test_the_learned_scale_rises_where_the_embedding_is_noisier() -> None:
    # One neuron: its left half embedded tightly, its right half scattered by noise. Only the
    # scales are free; they settle where the attenuated pull is smallest.
    rng = np.random.default_rng(0)
    shape = (1, 1, 2, 8, 16)
    noise = np.where(np.arange(16) < 8, 0.1, 3.0)[None, None, None, None, :]
    embedding = torch.from_numpy((rng.normal(size=(1, 3, 2, 8, 16)) * noise).astype(np.float32))
    labels = torch.ones(shape[0], *shape[2:], dtype=torch.int64)
    target = Target(labels, labels > 0, labels < 0)
    raw_scale = torch.zeros(shape, requires_grad=True)
    optimizer = torch.optim.Adam([raw_scale], lr=0.1)
    for _ in range(200):
        pull, _, _ = discriminative_loss(embedding, target, 0.5, 1.5, scale=raw_scale)
        optimizer.zero_grad()
        pull.backward()
        optimizer.step()
    scale = embedding_scale(raw_scale.detach())[0, 0]
    clean, noisy = float(scale[..., :8].mean()), float(scale[..., 8:].mean())
    assert clean < 1.1 < 2.0 < noisy


def test_decomposition_splits_total_into_aleatoric_and_epistemic() -> None:
    fg = np.full((4, 1, 2, 2), 0.5, np.float32)
    fg[:, 0, 1, 1] = [0.0, 1.0, 0.0, 1.0]  # the samples disagree on one voxel
    embedding = np.zeros((4, 2, 1, 2, 2), np.float32)
    embedding[:, 0, 0, 0, 0] = [0.0, 2.0, 0.0, 2.0]
    scale = np.ones((4, 1, 2, 2), np.float32)
    scale[:, 0, 0, 1] = 3.0
    parts = decompose(fg, embedding, scale)
    assert parts.foreground_total[0, 0, 0] == pytest.approx(1.0)
    assert parts.foreground_aleatoric[0, 0, 0] == pytest.approx(1.0)  # each sample is unsure
    assert parts.foreground_epistemic[0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert parts.foreground_epistemic[0, 1, 1] == pytest.approx(1.0, abs=1e-4)  # they disagree
    assert parts.embedding_epistemic[0, 0, 0] == pytest.approx(1.0)  # variance of 0, 2, 0, 2
    assert parts.embedding_aleatoric[0, 0, 1] == pytest.approx(2.0)
    assert parts.embedding_total[0, 0, 1] == pytest.approx(2.0)
    assert np.all(decompose(fg, embedding).embedding_aleatoric == 0)
    means = instance_means(np.array([[[1, 1], [0, 2]]], np.uint32), parts.embedding_total)
    assert means == {1: pytest.approx(1.5), 2: pytest.approx(0.0)}
