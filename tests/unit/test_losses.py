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
    contact_voxels,
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


def test_background_joins_the_embedding_loss_only_when_asked() -> None:
    embedding, target = line_case([(0, 0), (0, 0), (5, 0)], [1, 1, 0])
    pull, _, _ = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    assert float(pull) == 0.0
    _, push, _ = discriminative_loss(embedding, target, DELTA_V, DELTA_D, embed_background=True)
    assert float(push.detach()) == 0.0  # 5 > 2 delta_d: background already far enough
    close, _ = line_case([(0, 0), (0, 0), (1, 0)], [1, 1, 0])
    _, push_close, _ = discriminative_loss(close, target, DELTA_V, DELTA_D, embed_background=True)
    assert float(push_close) == pytest.approx((2 * DELTA_D - 1.0) ** 2, rel=1e-4)


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
    # features, and masks without them left it predicting 3x too much foreground).
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


def test_contact_voxels_are_annotated_neuron_voxels_with_another_neuron_within_reach() -> None:
    labels = torch.tensor([[1, 1, 1, 1, 0, 2, 2, 3, 0, 0, 0, 4]]).reshape(1, 1, 1, 12)
    touching = contact_voxels(labels, torch.ones_like(labels, dtype=torch.bool))
    # 1 and 2 lie 2 apart (voxels 3 and 5); 2 and 3 touch; 4 lies 4 from 3 (reach 2)
    expected = [False, False, False, True, False, True, True, True, False, False, False, False]
    assert touching.flatten().tolist() == expected
    hidden = torch.ones_like(labels, dtype=torch.bool)
    hidden[..., 5:7] = False  # neuron 2 not annotated: neither 1 nor 3 touches anything
    assert not bool(contact_voxels(labels, hidden).any())


def test_contact_voxels_match_a_brute_force_search_on_random_labels() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 5, 7, 6), generator=generator)
    annotated = torch.rand(labels.shape, generator=generator) > 0.3
    known = torch.where(annotated, labels, 0)
    expected = torch.zeros_like(annotated)
    for b, z, y, x in (known > 0).nonzero().tolist():
        box = known[b, max(z - 2, 0) : z + 3, max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3]
        expected[b, z, y, x] = bool(((box > 0) & (box != known[b, z, y, x])).any())
    assert expected.any() and not expected.all()
    assert torch.equal(contact_voxels(labels, annotated), expected)


# Neurons 1 (voxels 0-3) and 2 (voxels 4-6) touch: voxels 2-5 are contact voxels.
TOUCHING = [1, 1, 1, 1, 2, 2, 2]


def contact_weight(target: Target, extra: float) -> torch.Tensor:
    return 1 + extra * contact_voxels(target.labels, target.mask).float()


def test_contact_voxels_weigh_more_in_the_hand_computed_pull() -> None:
    # Neuron 1 on the line at 3, 0, -1, -2 (mean 0): pull hinges 2.5^2, 0, 0.5^2, 1.5^2;
    # neuron 2 tight (no pull). Contact voxels 2 and 3 weigh 4 with an extra weight of 3.
    embedding, target = line_case([(3, 0), (0, 0), (-1, 0), (-2, 0)] + [(9, 0)] * 3, TOUCHING)
    hinges = [2.5**2, 0.0, 0.5**2, 1.5**2]
    plain, _, _ = discriminative_loss(embedding, target, DELTA_V, DELTA_D)
    assert float(plain) == pytest.approx(sum(hinges) / 4 / 2, rel=1e-5)
    weighted, _, _ = discriminative_loss(
        embedding, target, DELTA_V, DELTA_D, weight=contact_weight(target, 3.0)
    )
    expected = (hinges[0] + hinges[1] + 4 * hinges[2] + 4 * hinges[3]) / 10 / 2
    assert float(weighted) == pytest.approx(expected, rel=1e-5)


def test_contact_voxels_weigh_more_in_the_hand_computed_instance_masks() -> None:
    # Neuron 1 at 0, neuron 2 at distance sigma: each mask reaches the other neuron's voxels
    # with the kernel value q. Weights: neuron 1 [1, 1, 4, 4], neuron 2 [4, 4, 1].
    embedding, target = line_case([(0, 0)] * 4 + [(DELTA_V, 0)] * 3, TOUCHING)
    q = math.exp(-0.5)

    def dice_loss(own: float, other: float) -> float:  # own / other: weight sums
        return 1 - (2 * own + 1) / (own + q * other + own + 1)

    plain = instance_mask_loss(embedding, target, DELTA_V)
    assert float(plain) == pytest.approx((dice_loss(4, 3) + dice_loss(3, 4)) / 2, rel=1e-5)
    weighted = instance_mask_loss(embedding, target, DELTA_V, contact_weight(target, 3.0))
    assert float(weighted) == pytest.approx((dice_loss(10, 9) + dice_loss(9, 10)) / 2, rel=1e-5)


def test_segmentation_loss_weighs_contact_voxels_only_when_asked() -> None:
    embedding, target = line_case([(3, 0), (0, 0), (-1, 0), (-2, 0)] + [(0.5, 0)] * 3, TOUCHING)
    output = HeadOutput(embedding, torch.zeros(1, 1, 1, 1, 7), None)
    plain = segmentation_loss(output, target, LossConfig())
    weighted = segmentation_loss(output, target, LossConfig(contact_weight=3.0))
    weight = contact_weight(target, 3.0)
    pull, _, _ = discriminative_loss(embedding, target, DELTA_V, DELTA_D, weight=weight)
    assert float(weighted.pull) == pytest.approx(float(pull)) != pytest.approx(float(plain.pull))
    mask = instance_mask_loss(embedding, target, DELTA_V, weight)
    assert float(weighted.mask) == pytest.approx(float(mask)) != pytest.approx(float(plain.mask))
    assert float(weighted.foreground) == float(plain.foreground)


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
