"""The probabilistic backbones beyond the original three: shake-shake on/off and its test-time
sampler, Bayes by Backprop, the probabilistic U-Net, and ensembles of probabilistic members."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from activeseg.config import ModelConfig, load_config
from activeseg.core.models.bayes import BayesConv3d, BayesNet, gaussian_kl
from activeseg.core.models.checkpoint import load_model
from activeseg.core.models.losses import Target
from activeseg.core.models.net import SegmentationNet
from activeseg.core.models.probabilistic import ProbabilisticModel
from activeseg.core.models.probunet import ProbUNet
from activeseg.core.training import TrainingCrop, train_model
from activeseg.errors import ConfigError

TINY = {"widths": (4, 8), "pool": ((1, 2, 2),), "embed_dim": 3, "groups": 2, "in_channels": 2}


def tiny_config(**changes: object) -> ModelConfig:
    return ModelConfig.model_validate({**TINY, **changes})


def target(seed: int, shape: tuple[int, int, int] = (2, 8, 8)) -> Target:
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(rng.integers(0, 3, (1, *shape)))
    return Target(labels, torch.ones_like(labels, dtype=torch.bool), torch.zeros_like(labels) > 0)


# --------------------------------------------------------------------------- shake-shake


def head_constant_net(shake: bool) -> SegmentationNet:
    """Return a 4-head net in training mode whose head m outputs m + 1 everywhere."""
    config = tiny_config(kind="mheads", samples=4, shake_shake=shake)
    net = SegmentationNet(config, heads=4, dropout=0.0).train()
    with torch.no_grad():
        net.heads.out.weight.zero_()
        net.heads.out.bias.copy_(torch.arange(1.0, 5.0).repeat_interleave(net.heads.channels))
    return net


def forward_and_backward_weights(net: SegmentationNet) -> tuple[float, torch.Tensor]:
    """Return (the forward mix sum_m a_m (m + 1), the heads' backward weights b_m)."""
    out = net(torch.randn(1, 2, 2, 8, 8))
    out.logit.sum().backward()
    grad = net.heads.out.bias.grad
    assert grad is not None
    return float(out.logit.detach().flatten()[0]), grad.view(4, -1)[:, 3] / out.logit.numel()


def test_without_shake_shake_the_heads_weigh_the_same_forward_and_backward() -> None:
    torch.manual_seed(1)
    forward_value, backward_w = forward_and_backward_weights(head_constant_net(shake=False))
    assert float(backward_w.sum()) == pytest.approx(1.0, rel=1e-5)
    assert len(set(backward_w.tolist())) == 4  # still a random convex draw, not the mean
    assert forward_value == pytest.approx(float(backward_w @ torch.arange(1.0, 5.0)), abs=1e-5)
    torch.manual_seed(1)
    forward_value, backward_w = forward_and_backward_weights(head_constant_net(shake=True))
    assert forward_value != pytest.approx(float(backward_w @ torch.arange(1.0, 5.0)), abs=1e-3)


def test_shake_shake_is_a_config_switch() -> None:
    assert tiny_config().shake_shake
    assert not tiny_config(shake_shake=False).shake_shake
    assert not SegmentationNet(tiny_config(shake_shake=False), heads=2, dropout=0.0).shake


def test_shake_sampler_draws_random_convex_mixes_of_the_heads() -> None:
    config = tiny_config(kind="mheads", samples=5, heads=3, sampler="shake")
    model = ProbabilisticModel(config, seed=0)
    x = torch.randn(1, 2, 2, 8, 8)
    draws, again = model.sample(x, seed=3), model.sample(x, seed=3)
    assert model.n_samples == 5 and draws.embedding.shape == (5, 1, 3, 2, 8, 8)
    assert torch.equal(draws.embedding, again.embedding)
    assert not torch.allclose(draws.embedding[0], draws.embedding[1])
    with torch.no_grad():
        heads = model.nets()[0].all_heads(x).embedding.flatten(1)  # (3, N)
    for sample in draws.embedding.flatten(1):  # each a convex mix of the 3 heads
        weights = torch.linalg.lstsq(heads.T, sample[:, None]).solution[:, 0]
        assert torch.allclose(weights @ heads, sample, atol=1e-4)
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-3)
        assert torch.all(weights > -1e-3)


# --------------------------------------------------------------------------- samples of every kind


@pytest.mark.parametrize(
    ("kind", "members", "expected"),
    [("bbb", 1, 3), ("probunet", 1, 3), ("bbb", 2, 6), ("mheads", 2, 6), ("dropout", 2, 6)],
)
@pytest.mark.parametrize("aleatoric", [False, True])
def test_new_kinds_and_members_sample_the_promised_shapes(
    kind: str, members: int, expected: int, aleatoric: bool
) -> None:
    config = tiny_config(kind=kind, samples=3, members=members, aleatoric=aleatoric)
    model = ProbabilisticModel(config, seed=0).eval()
    x = torch.randn(2, 2, 2, 8, 8)
    out, again = model.sample(x, seed=5), model.sample(x, seed=5)
    assert model.n_samples == expected and len(model.nets()) == members
    assert out.foreground.shape == (expected, 2, 2, 8, 8)
    assert out.embedding.shape == (expected, 2, 3, 2, 8, 8)
    assert torch.equal(out.embedding, again.embedding)  # seeded: the same S networks again
    assert all(not torch.allclose(out.embedding[0], out.embedding[k]) for k in range(1, expected))
    if aleatoric:
        assert out.embedding_scale is not None and out.aleatoric_var is not None
        assert out.embedding_scale.shape == (expected, 2, 2, 8, 8)
        assert torch.all(out.embedding_scale >= 1)
    else:
        assert out.embedding_scale is None
    assert not model.training


def test_members_start_from_their_own_weights() -> None:
    model = ProbabilisticModel(tiny_config(kind="bbb", samples=2, members=2), seed=0)
    first, second = (net.heads.out.weight for net in model.nets())
    assert not torch.allclose(first, second)


def test_kind_ensemble_takes_members_from_samples_only() -> None:
    assert tiny_config(kind="ensemble", samples=4).embedding_spaces == 4
    assert tiny_config(kind="mheads", members=3).embedding_spaces == 3
    assert not tiny_config(kind="mheads", members=3).shared_embedding
    with pytest.raises(ValueError, match="members"):
        tiny_config(kind="ensemble", samples=4, members=2)


# --------------------------------------------------------------------------- Bayes by Backprop


def test_bayes_conv_uses_local_reparameterization_while_training() -> None:
    torch.manual_seed(0)
    conv = BayesConv3d(2, 3, 1, prior_sigma=0.1)
    with torch.no_grad():
        conv.weight_rho.fill_(0.0)  # sigma = softplus(0) = log 2
    x = torch.randn(1, 2, 1, 40, 40)
    conv.train()
    with torch.no_grad():
        draws = torch.stack([conv(x) for _ in range(200)])
    mean = conv._conv_forward(x, conv.weight, conv.bias)
    sigma_w, sigma_b = conv.sigmas()
    var = conv._conv_forward(x * x, sigma_w**2, sigma_b**2)
    assert float((draws.mean(0) - mean.detach()).abs().mean()) < 0.1
    assert float((draws.var(0) / var.detach()).mean()) == pytest.approx(1.0, abs=0.1)
    conv.eval()
    assert torch.equal(conv(x), mean)  # eval without sampling: the mean weights


def test_kl_to_the_prior_is_positive_and_zero_only_at_the_prior() -> None:
    sigma = torch.tensor([0.1, 0.05, 0.3])
    assert torch.all(gaussian_kl(torch.tensor([0.0, 0.0, 0.2]), sigma, 0.1)[1:] > 0)
    assert float(gaussian_kl(torch.zeros(1), torch.full((1,), 0.1), 0.1)) == pytest.approx(0.0)
    assert float(BayesNet(tiny_config(kind="bbb"), draws=2).kl_divergence()) > 0


def fit_with_kl(net: SegmentationNet, kl_weight: float, steps: int = 30) -> float:
    """Return the net's KL term after fitting random data with that KL weight."""
    torch.manual_seed(0)
    x, t = torch.randn(1, 2, 2, 8, 8), target(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    net.train()
    for _ in range(steps):
        out = net(x, t)
        loss = (out.embedding - 1).pow(2).mean() + (out.logit - 2).pow(2).mean()
        total = loss + kl_weight * net.kl_divergence()
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    net(x, t)
    return float(net.kl_divergence())


@pytest.mark.parametrize("kind", ["bbb", "probunet"])
def test_weighting_the_kl_up_brings_the_posterior_to_the_prior(kind: str) -> None:
    def make() -> SegmentationNet:
        torch.manual_seed(0)
        config = tiny_config(kind=kind, prior_sigma=0.05)
        return BayesNet(config, 2) if kind == "bbb" else ProbUNet(config, 2)

    free, pulled = fit_with_kl(make(), 0.0), fit_with_kl(make(), 10.0)
    assert free > 0 and pulled > 0
    assert pulled < 0.8 * free


def test_bbb_posterior_spread_shrinks_towards_a_narrow_prior_when_the_kl_weighs_more() -> None:
    def spread(kl_weight: float) -> float:
        torch.manual_seed(0)
        net = BayesNet(tiny_config(kind="bbb", prior_sigma=1e-3), 2)
        with torch.no_grad():
            for layer in net.layers():
                layer.weight_rho.fill_(-3.0)  # sigma 0.049, wider than the prior
        fit_with_kl(net, kl_weight)
        return float(torch.cat([layer.sigmas()[0].flatten() for layer in net.layers()]).mean())

    assert spread(10.0) < spread(0.0)


# --------------------------------------------------------------------------- probabilistic U-Net


def test_probunet_posterior_sees_the_labels_and_the_prior_does_not() -> None:
    torch.manual_seed(0)
    net = ProbUNet(tiny_config(kind="probunet"), draws=2).eval()
    x = torch.randn(1, 2, 2, 8, 8)
    first, second = net.posterior_of(x, target(1)), net.posterior_of(x, target(2))
    assert not torch.allclose(first.mean, second.mean)
    x.requires_grad_(True)
    prior = net.prior(x)
    assert prior.mean.shape == (1, 6)
    # the prior is a function of the image alone: its first layer takes the image's channels
    assert net.prior.features[0].in_channels == 2
    assert net.posterior.features[0].in_channels == 4
    net.train()
    torch.manual_seed(3)
    one = net(x, target(1)).embedding
    torch.manual_seed(3)
    two = net(x, target(2)).embedding
    assert not torch.allclose(one, two)  # training draws its latent from the posterior


def test_probunet_training_pass_keeps_its_kl_and_test_samples_use_the_prior() -> None:
    torch.manual_seed(0)
    net = ProbUNet(tiny_config(kind="probunet"), draws=4).train()
    x = torch.randn(1, 2, 2, 8, 8)
    net(x, target(1))
    assert float(net.kl_divergence()) > 0
    net.eval()
    with torch.no_grad():
        samples = net.sample_outputs(x, seed=0)
        mean_latent = net.heads_of(net.inject(net.backbone(x), net.prior(x).mean)).embedding
    assert samples.embedding.shape == (4, 1, 3, 2, 8, 8)
    assert torch.allclose(samples.embedding.mean(0), mean_latent[0], atol=0.5)


# --------------------------------------------------------------------------- training


def tubes() -> TrainingCrop:
    rng = np.random.default_rng(0)
    shape = (16, 32, 32)
    labels = np.zeros(shape, np.uint32)
    labels[:, 8:11, :] = 1
    labels[:, 20:23, :] = 2
    raw = rng.normal(100, 10, (1, *shape)) + 500 * (labels > 0)
    return TrainingCrop(raw.astype(np.uint16), labels, np.ones(shape, bool), labels > 9)


@pytest.mark.parametrize(
    "model", [{"kind": "bbb"}, {"kind": "probunet"}, {"kind": "mheads", "members": 2,
                                                       "aleatoric": True}]
)  # fmt: skip
def test_new_kinds_train_save_and_load(tmp_path: Path, model: dict[str, object]) -> None:
    config = load_config("smoke")
    data = config.model_dump()
    data["model"].update(model)
    data["model"]["samples"] = 2
    data["train"]["steps"] = 2
    config = type(config).model_validate(data)
    result = train_model([tubes()], config, tmp_path / "model")
    trained = load_model(result.checkpoint)
    assert trained.config.model.kind == model["kind"]
    assert np.isfinite(result.final_loss)
    out = trained.model.sample(torch.zeros(1, 1, *config.train.patch), seed=0)
    assert out.foreground.shape[0] == 2 * int(model.get("members", 1))  # type: ignore[call-overload]


def test_unknown_kind_is_a_config_error() -> None:
    from activeseg.config import parse_config

    with pytest.raises(ConfigError, match="kind"):
        parse_config({"model": {"kind": "gp"}})
