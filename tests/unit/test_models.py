"""U-Net backbone, shake-shake heads and the sampling interface of every variant."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from activeseg.config import ModelConfig
from activeseg.core.models.heads import OutputHeads, random_convex_weights
from activeseg.core.models.probabilistic import ProbabilisticModel, SegmentationNet
from activeseg.core.models.unet import CalibratedGroupNorm, UNet3d, calibrating

TINY = {"widths": (4, 8), "pool": ((1, 2, 2),), "embed_dim": 3, "groups": 2, "in_channels": 2}


def tiny_config(**changes: object) -> ModelConfig:
    return ModelConfig.model_validate({**TINY, **changes})


def test_unet_keeps_the_spatial_shape_with_anisotropic_pooling() -> None:
    net = UNet3d(2, (4, 8, 8), ((1, 2, 2), (2, 2, 2)), groups=2)
    out = net(torch.randn(1, 2, 4, 16, 24))
    assert out.shape == (1, 4, 4, 16, 24)
    assert net.divisor() == (2, 4, 4)


def test_group_norm_uses_each_inputs_statistics_until_calibrated_then_fixed_ones() -> None:
    norm = CalibratedGroupNorm(2, 4)
    x = torch.randn(1, 4, 3, 5, 5) * 3 + 1
    corner = x[..., :2, :2, :2]
    assert torch.allclose(norm(x), F.group_norm(x, 2, eps=norm.eps), atol=1e-5)
    norm.eval()
    assert torch.allclose(norm(corner), F.group_norm(corner, 2, eps=norm.eps), atol=1e-5)
    with calibrating(norm):
        norm(x)
    # fixed statistics: a voxel's output no longer depends on the rest of the input
    assert torch.allclose(norm(corner), norm(x)[..., :2, :2, :2], atol=1e-6)
    assert not torch.allclose(norm(corner), F.group_norm(corner, 2, eps=norm.eps), atol=1e-2)
    norm.train()  # training always normalizes by the input's own statistics
    assert torch.allclose(norm(corner), F.group_norm(corner, 2, eps=norm.eps), atol=1e-5)


def test_calibrating_sets_the_inference_statistics_to_those_of_the_input() -> None:
    norm = CalibratedGroupNorm(2, 4).eval()
    x = torch.randn(2, 4, 3, 5, 5) * 3 + 1
    with calibrating(norm):
        norm(x)
    # both batch items pooled: GroupNorm of the two side by side along x
    side_by_side = torch.cat([x[0], x[1]], dim=-1)[None]
    expected = F.group_norm(side_by_side, 2, eps=norm.eps)
    assert torch.allclose(norm(side_by_side), expected, atol=1e-5)
    assert not norm.calibrating
    norm(x * 10)  # outside the block the statistics stay
    assert torch.allclose(norm(side_by_side), expected, atol=1e-5)


def test_an_input_voxel_influences_outputs_only_within_the_stated_context() -> None:
    torch.manual_seed(0)
    net = UNet3d(1, (4, 8, 8), ((1, 2, 2), (2, 2, 2)), groups=2).eval()
    x = torch.zeros(1, 1, 48, 96, 96)
    bumped = x.clone()
    bumped[0, 0, 24, 48, 48] = 100.0
    with torch.no_grad():
        with calibrating(net):  # fixed statistics: no voxel sees the whole input through them
            net(torch.randn(1, 1, 16, 32, 32))
        changed = (net(bumped) - net(x)).abs().amax(dim=(0, 1)) > 0
    reach = changed.nonzero()
    extent = (reach - torch.tensor([24, 48, 48])).abs().amax(dim=0)
    context = torch.tensor(net.context())
    assert torch.all(extent <= context)
    assert torch.all(extent >= context // 2)  # the bound is not wildly loose


def test_mixing_head_parameters_equals_mixing_head_outputs() -> None:
    torch.manual_seed(0)
    heads = OutputHeads(features=5, embed_dim=3, heads=4, aleatoric=True)
    features = torch.randn(2, 5, 2, 3, 4)
    weights = random_convex_weights(2, 4, features.device)
    mixed = heads.mix(features, weights)
    expected = (heads(features) * weights[:, :, None, None, None, None]).sum(dim=1)
    assert mixed.shape == (2, 6, 2, 3, 4)  # 3 embedding, logit, its log-variance, scale
    assert torch.allclose(mixed, expected, atol=1e-5)


def test_shake_shake_forwards_one_mix_and_backpropagates_another() -> None:
    torch.manual_seed(0)
    heads = OutputHeads(features=5, embed_dim=3, heads=4, aleatoric=False)
    features = torch.randn(2, 5, 2, 3, 4, requires_grad=True)
    forward_w, backward_w = (random_convex_weights(2, 4, features.device) for _ in range(2))
    mixed = heads.shake_shake(features, forward_w, backward_w)
    assert torch.allclose(mixed, heads.mix(features, forward_w), atol=1e-5)
    upstream = torch.randn_like(mixed)
    (mixed * upstream).sum().backward()
    got = (features.grad, heads.out.weight.grad, heads.out.bias.grad)
    features.grad = heads.out.weight.grad = heads.out.bias.grad = None
    # the gradient of every parameter and feature is that of the backward mix of the outputs
    stacked = heads(features)
    backward_mix = (stacked * backward_w[:, :, None, None, None, None]).sum(dim=1)
    (backward_mix * upstream).sum().backward()
    expected = (features.grad, heads.out.weight.grad, heads.out.bias.grad)
    for g, e in zip(got, expected, strict=True):
        assert g is not None and e is not None
        assert torch.allclose(g, e, atol=1e-5)


def test_shake_shake_weights_differ_between_forward_and_backward() -> None:
    torch.manual_seed(1)
    net = SegmentationNet(tiny_config(kind="mheads", samples=4), heads=4, dropout=0.0).train()
    with torch.no_grad():  # head m outputs m + 1 everywhere
        net.heads.out.weight.zero_()
        net.heads.out.bias.copy_(torch.arange(1.0, 5.0).repeat_interleave(net.heads.channels))
    out = net(torch.randn(1, 2, 2, 8, 8))
    out.logit.sum().backward()
    grad = net.heads.out.bias.grad
    assert grad is not None
    backward_w = grad.view(4, -1)[:, net.heads.embed_dim] / out.logit.numel()
    assert float(backward_w.sum()) == pytest.approx(1.0, rel=1e-5)
    assert torch.all(backward_w >= 0)
    assert len(set(backward_w.tolist())) == 4  # every head gets its own gradient scale
    forward_value = float(out.logit.detach().flatten()[0])  # sum_m a_m (m + 1)
    assert torch.allclose(out.logit, torch.full_like(out.logit, forward_value))
    assert forward_value != pytest.approx(float(backward_w @ torch.arange(1.0, 5.0)), abs=1e-3)


def test_mheads_receive_different_gradients_in_training() -> None:
    torch.manual_seed(0)
    net = SegmentationNet(tiny_config(kind="mheads", samples=3), heads=3, dropout=0.0).train()
    out = net(torch.randn(1, 2, 2, 8, 8))
    out.embedding.sum().backward()
    grad = net.heads.out.weight.grad
    assert grad is not None
    per_head = grad.reshape(3, -1, *grad.shape[1:])[:, :3].flatten(1)
    assert not torch.allclose(per_head[0], per_head[1])
    assert not torch.allclose(per_head[1], per_head[2])


def test_mheads_training_output_is_random_and_eval_output_is_the_mean() -> None:
    torch.manual_seed(0)
    net = SegmentationNet(tiny_config(kind="mheads", samples=4), heads=4, dropout=0.0)
    x = torch.randn(1, 2, 2, 8, 8)
    net.train()
    first, second = net(x).embedding, net(x).embedding
    assert not torch.allclose(first, second)
    net.eval()
    with torch.no_grad():
        mean = net(x).embedding
        heads = net.all_heads(x).embedding
    assert torch.allclose(mean, heads.mean(dim=0), atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "samples", "expected"),
    [("single", 5, 1), ("mheads", 4, 4), ("ensemble", 3, 3), ("dropout", 3, 3)],
)
@pytest.mark.parametrize("aleatoric", [False, True])
def test_every_variant_samples_the_promised_shapes(
    kind: str, samples: int, expected: int, aleatoric: bool
) -> None:
    config = tiny_config(kind=kind, samples=samples, aleatoric=aleatoric, dropout=0.3)
    model = ProbabilisticModel(config, seed=0)
    out = model.sample(torch.randn(2, 2, 2, 8, 8), seed=0)
    assert model.n_samples == expected
    assert out.foreground.shape == (expected, 2, 2, 8, 8)
    assert out.embedding.shape == (expected, 2, 3, 2, 8, 8)
    assert torch.all((out.foreground >= 0) & (out.foreground <= 1))
    if aleatoric:
        assert out.aleatoric_var is not None and out.aleatoric_var.shape == (expected, 2, 2, 8, 8)
        assert torch.all(out.aleatoric_var > 0)
    else:
        assert out.aleatoric_var is None
    if expected > 1:
        assert not torch.allclose(out.embedding[0], out.embedding[1])


def test_ensemble_members_have_their_own_initialization() -> None:
    model = ProbabilisticModel(tiny_config(kind="ensemble", samples=2), seed=0)
    first, second = (net.heads.out.weight for net in model.nets())
    assert not torch.allclose(first, second)
    again = ProbabilisticModel(tiny_config(kind="ensemble", samples=2), seed=0)
    assert torch.equal(again.nets()[1].heads.out.weight, second)


def test_dropout_samples_repeat_for_a_seed_and_leave_the_model_in_eval_mode() -> None:
    model = ProbabilisticModel(tiny_config(kind="dropout", samples=3, dropout=0.5), seed=0)
    model.eval()
    x = torch.randn(1, 2, 2, 8, 8)
    first, again = model.sample(x, seed=7), model.sample(x, seed=7)
    other = model.sample(x, seed=8)
    assert torch.equal(first.embedding, again.embedding)
    assert not torch.allclose(first.embedding, other.embedding)
    assert not model.training
    assert not any(m.training for m in model.modules())


def test_sample_keep_returns_the_kept_box_of_the_full_output() -> None:
    model = ProbabilisticModel(tiny_config(kind="mheads", samples=2), seed=0)
    x = torch.randn(1, 2, 4, 8, 8)
    full = model.sample(x)
    box = (slice(1, 3), slice(2, 6), slice(0, 5))
    kept = model.sample(x, keep=box)
    assert torch.allclose(kept.embedding, full.embedding[(..., *box)], atol=1e-6)
