"""Discriminative and foreground losses on hand-made embeddings with hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from activeseg.config import LossConfig
from activeseg.core.models.heads import HeadOutput
from activeseg.core.models.losses import (
    Target,
    attenuated_bce,
    discriminative_loss,
    foreground_loss,
    instance_mask_loss,
    segmentation_loss,
)

DELTA_V, DELTA_D = 0.5, 1.5


def line_case(
    points: Sequence[tuple[float, float]], labels: Sequence[int]
) -> tuple[torch.Tensor, Target]:
    """Return embeddings (1, 2, 1, 1, N) at the given points and a fully annotated target."""
    embedding = torch.tensor(points, dtype=torch.float32).T.reshape(1, 2, 1, 1, -1)
    label = torch.tensor(labels, dtype=torch.int64).reshape(1, 1, 1, -1)
    mask = torch.ones_like(label, dtype=torch.bool)
    return embedding, Target(label, mask, torch.zeros_like(mask))


def test_two_separated_tight_instances_have_zero_pull_and_push() -> None:
    embedding, target = line_case([(0, 0), (0.1, 0), (10, 0), (10, 0.2)], [1, 1, 2, 2])
    pull, push, reg = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    assert float(pull) == 0.0
    assert float(push) == 0.0
    # reg: mean norm of the means (0.05, 0) and (10, 0.1)
    assert float(reg) == pytest.approx((0.05 + math.hypot(10, 0.1)) / 2, rel=1e-5)


def test_a_swapped_label_costs_the_hand_computed_pull() -> None:
    # Voxel 2 lies with instance 1 but is labeled 2: instance 2 = {(0,0), (10,0), (10,0)}.
    embedding, target = line_case([(0, 0), (0, 0), (10, 0), (10, 0)], [1, 2, 2, 2])
    pull, push, _ = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    mean2 = 20 / 3
    inst2 = ((mean2 - DELTA_V) ** 2 + 2 * (10 / 3 - DELTA_V) ** 2) / 3
    assert float(pull) == pytest.approx((0.0 + inst2) / 2, rel=1e-4)
    assert float(push) == 0.0  # means 0 and 6.67 are still > 2 delta_d apart


def test_close_instance_means_are_pushed_by_the_hinge() -> None:
    embedding, target = line_case([(0, 0), (1, 0)], [1, 2])
    _, push, _ = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    assert float(push) == pytest.approx((2 * DELTA_D - 1.0) ** 2, rel=1e-4)


def test_unannotated_voxels_get_no_gradient() -> None:
    embedding, target = line_case([(0, 0), (3, 0), (7, 0), (9, 0)], [1, 1, 2, 2])
    target = Target(
        target.labels, torch.tensor([True, True, False, True]).reshape(1, 1, 1, 4), target.overlap
    )
    embedding.requires_grad_(True)
    logit = torch.zeros(1, 1, 1, 4, requires_grad=True)
    pull, push, reg = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    (pull + push + reg + foreground_loss(logit, target)).backward()
    assert embedding.grad is not None and logit.grad is not None
    assert torch.all(embedding.grad[..., 2] == 0)
    assert float(logit.grad[..., 2]) == 0.0
    assert torch.any(embedding.grad[..., 0] != 0)
    assert float(logit.grad[..., 0]) != 0.0


def test_overlap_voxels_are_left_out_of_the_embedding_loss() -> None:
    points = [(0, 0), (0, 0), (10, 0), (10, 0), (50, 50)]
    embedding, target = line_case(points, [1, 1, 2, 2, 1])
    overlap = torch.tensor([False, False, False, False, True]).reshape(1, 1, 1, 5)
    target = Target(target.labels, target.mask, overlap)
    embedding.requires_grad_(True)
    pull, push, _ = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    # the outlier at (50, 50) is ignored
    assert float(pull.detach()) == 0.0 and float(push.detach()) == 0.0
    logit = torch.zeros(1, 1, 1, 5, requires_grad=True)
    (pull + foreground_loss(logit, target)).backward()
    assert embedding.grad is not None and logit.grad is not None
    assert torch.all(embedding.grad[..., 4] == 0)
    assert float(logit.grad[..., 4]) < 0  # still foreground for the foreground head


def test_an_empty_batch_gives_zero_loss_that_can_be_backpropagated() -> None:
    embedding, target = line_case([(0, 0), (1, 0)], [0, 0])
    embedding.requires_grad_(True)
    pull, push, reg = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    (pull + push + reg).backward()
    assert float((pull + push + reg).detach()) == 0.0
    assert embedding.grad is not None and torch.all(embedding.grad == 0)


def test_instance_masks_of_separated_tight_neurons_cost_nothing() -> None:
    embedding, target = line_case([(0, 0), (0, 0), (10, 0), (10, 0)], [1, 1, 2, 2])
    assert float(instance_mask_loss(embedding, target, DELTA_V)) == 0.0


def test_a_voxel_inside_another_neurons_mask_costs_the_hand_computed_dice() -> None:
    # Neuron 2's third voxel sits on neuron 1: both means move and both masks are impure.
    embedding, target = line_case([(0, 0), (0, 0), (10, 0), (10, 0), (0, 0)], [1, 1, 2, 2, 2])
    mean2 = 20 / 3

    def kernel(d: float) -> float:
        return math.exp(-(d**2) / (2 * DELTA_V**2))

    def dice_loss(own: list[float], other: list[float]) -> float:
        return 1 - (2 * sum(own) + 1) / (sum(own) + sum(other) + len(own) + 1)

    first = dice_loss([1.0, 1.0], [kernel(10), kernel(10), 1.0])
    second = dice_loss(
        [kernel(10 - mean2), kernel(10 - mean2), kernel(mean2)], [kernel(mean2), kernel(mean2)]
    )
    loss = instance_mask_loss(embedding, target, DELTA_V)
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-5)
    assert float(loss) > 0.1


def test_background_inside_a_neurons_mask_costs_its_kernel_weight() -> None:
    # Background voxels count against every mask they reach (the foreground head shares the
    # features, and masks without them left it predicting far too much foreground).
    far, _ = line_case([(0, 0), (0, 0), (10, 0)], [1, 1, 0])
    near, target = line_case([(0, 0), (0, 0), (0.5, 0)], [1, 1, 0])
    assert float(instance_mask_loss(far, target, DELTA_V)) == 0.0
    weight = math.exp(-(0.5**2) / (2 * DELTA_V**2))
    expected = 1 - (2 * 2 + 1) / (2 + weight + 2 + 1)
    assert float(instance_mask_loss(near, target, DELTA_V)) == pytest.approx(expected, rel=1e-5)


def test_instance_masks_ignore_unannotated_and_overlap_voxels() -> None:
    embedding, target = line_case([(0, 0), (0, 0), (0, 0), (10, 0), (10, 0)], [1, 1, 2, 2, 2])
    unannotated = torch.tensor([True, True, False, True, True]).reshape(1, 1, 1, 5)
    for dropped in (
        Target(target.labels, unannotated, target.mask & False),
        Target(target.labels, target.mask, ~unannotated),
    ):
        embedding.grad = None
        embedding.requires_grad_(True)
        loss = instance_mask_loss(embedding, dropped, DELTA_V)
        loss.backward()
        assert float(loss.detach()) == 0.0
        assert embedding.grad is not None and torch.all(embedding.grad[..., 2] == 0)


@pytest.mark.parametrize("n_foreground", [1, 3, 7])
def test_balanced_bce_of_an_undecided_logit_is_log2_whatever_the_class_ratio(
    n_foreground: int,
) -> None:
    labels = torch.zeros(1, 1, 1, 8, dtype=torch.int64)
    labels[..., :n_foreground] = 1
    mask = torch.ones_like(labels, dtype=torch.bool)
    target = Target(labels, mask, torch.zeros_like(mask))
    loss = foreground_loss(torch.zeros(1, 1, 1, 8), target, dice=False)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-5)


def test_class_balancing_weighs_rare_foreground_up() -> None:
    labels = torch.zeros(1, 1, 1, 10, dtype=torch.int64)
    labels[..., 0] = 1
    mask = torch.ones_like(labels, dtype=torch.bool)
    target = Target(labels, mask, torch.zeros_like(mask))
    logit = torch.zeros(1, 1, 1, 10, requires_grad=True)
    foreground_loss(logit, target, dice=False).backward()
    assert logit.grad is not None
    # nine background voxels against one foreground voxel: the classes pull equally hard
    assert float(-logit.grad[..., 0]) == pytest.approx(float(logit.grad[..., 1:].sum()), rel=1e-5)


def test_dice_vanishes_for_a_confident_correct_prediction() -> None:
    labels = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 1, 4)
    mask = torch.ones_like(labels, dtype=torch.bool)
    target = Target(labels, mask, torch.zeros_like(mask))
    logit = torch.tensor([20.0, 20.0, -20.0, -20.0]).reshape(1, 1, 1, 4)
    assert float(foreground_loss(logit, target, dice=True)) < 1e-6


def test_aleatoric_loss_matches_bce_without_noise_and_attenuates_wrong_voxels() -> None:
    torch.manual_seed(0)
    logit = torch.tensor([4.0, -4.0])
    truth = torch.tensor([0.0, 1.0])  # both confidently wrong
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logit, truth, reduction="none")
    quiet = attenuated_bce(logit, torch.full((2,), -30.0), truth)
    noisy = attenuated_bce(logit, torch.full((2,), 4.0), truth)
    assert torch.allclose(quiet, plain, atol=1e-4)
    assert torch.all(noisy < plain)


def test_segmentation_loss_weighs_and_sums_the_terms() -> None:
    embedding, target = line_case([(0, 0), (1, 0)], [1, 2])
    output = HeadOutput(embedding, torch.zeros(1, 1, 1, 1, 2), None)
    config = LossConfig(w_push=2.0, w_reg=0.0, w_mask=0.0, foreground_dice=False)
    terms = segmentation_loss(output, target, config)
    expected = 2.0 * (2 * config.delta_d - 1.0) ** 2 + math.log(2)
    assert float(terms.total) == pytest.approx(expected, rel=1e-4)
    assert set(terms.as_floats()) == {"total", "pull", "push", "reg", "foreground", "mask"}
    assert float(terms.mask) == 0.0  # w_mask 0: not computed
    with_mask = segmentation_loss(output, target, config.model_copy(update={"w_mask": 0.5}))
    mask = float(instance_mask_loss(embedding, target, config.delta_v))
    assert mask > 0 and float(with_mask.mask) == pytest.approx(mask)
    assert float(with_mask.total) == pytest.approx(expected + 0.5 * mask, rel=1e-4)
