"""Training: input checks, patch sampling, and short runs of the smoke config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from activeseg.config import Config, load_config
from activeseg.core.models.checkpoint import CHECKPOINT_FILES, load_model
from activeseg.core.models.normalization import Normalization
from activeseg.core.training import (
    TrainingCrop,
    contact_voxels,
    contacts,
    prepare_crop,
    sample_batch,
    train_model,
    training_device,
    uses_bfloat16,
)
from activeseg.errors import InputError, StateError


def bright_tubes(shape: tuple[int, int, int] = (16, 32, 32), seed: int = 0) -> TrainingCrop:
    """Return a crop with three bright straight tubes along x, annotated on every other z."""
    rng = np.random.default_rng(seed)
    z, y = np.mgrid[: shape[0], : shape[1], : shape[2]][:2]
    labels = np.zeros(shape, np.uint32)
    raw = rng.normal(100, 10, (3, *shape))
    for k in range(3):
        cz, cy = rng.integers(3, shape[0] - 3), rng.integers(3, shape[1] - 3)
        tube = (z - cz) ** 2 + (y - cy) ** 2 <= 4
        labels[tube & (labels == 0)] = k + 1
        raw[k][tube] += 800
    mask = np.zeros(shape, bool)
    mask[::2] = True
    return TrainingCrop(raw.astype(np.uint16), labels, mask, np.zeros(shape, bool), "tubes")


def smoke(
    steps: int, seed: int = 0, lr: float | None = None, precision: str | None = None
) -> Config:
    config = load_config("smoke")
    update: dict[str, object] = {"steps": steps, "seed": seed}
    if lr is not None:
        update["lr"] = lr
    if precision is not None:
        update["precision"] = precision
    return config.model_copy(update={"train": config.train.model_copy(update=update)})


def test_training_without_crops_or_annotations_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no labeled crops"):
        train_model([], smoke(1), tmp_path)
    crop = bright_tubes()
    unlabeled = TrainingCrop(crop.raw, crop.labels, np.zeros_like(crop.mask), crop.overlap)
    with pytest.raises(StateError, match="annotated voxel"):
        train_model([unlabeled], smoke(1), tmp_path)


def test_crop_shapes_and_channels_are_checked(tmp_path: Path) -> None:
    crop = bright_tubes()
    with pytest.raises(InputError, match="mask has shape"):
        TrainingCrop(crop.raw, crop.labels, crop.mask[:-1], crop.overlap, "bad")
    two_channels = TrainingCrop(crop.raw[:2], crop.labels, crop.mask, crop.overlap, "rg")
    with pytest.raises(InputError, match=r"rg: raw has 2 channels, model.in_channels is 3"):
        train_model([crop, two_channels], smoke(1), tmp_path)  # auto: fixed by the first crop


def with_device(config: Config, device: str) -> Config:
    return config.model_copy(update={"train": config.train.model_copy(update={"device": device})})


def test_training_device_follows_the_config_and_what_torch_sees(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device(smoke(1)).type == "cuda"
    assert training_device(with_device(smoke(1), "cpu")).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device(smoke(1)).type == "cpu"
    with pytest.raises(InputError, match=r"train\.device is cuda, but torch sees no GPU"):
        train_model([bright_tubes()], with_device(smoke(1), "cuda"), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_bfloat16_follows_the_config_and_what_the_processor_computes_natively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not uses_bfloat16(smoke(1, precision="float32"), cpu)
    assert uses_bfloat16(smoke(1, precision="bfloat16"), cpu)
    for avx512_bf16, amx in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert uses_bfloat16(smoke(1), cpu) == (avx512_bf16 or amx)
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, v=supported: v)
        assert uses_bfloat16(smoke(1), cuda) == supported
        assert not uses_bfloat16(smoke(1, precision="float32"), cuda)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_learns_in_either_precision_and_keeps_float32_weights(
    tmp_path: Path, precision: str
) -> None:
    crops = [bright_tubes(seed=0), bright_tubes(seed=1)]
    conv_dtypes: set[torch.dtype] = set()

    def record(module: torch.nn.Module, _: object, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv3d):
            conv_dtypes.add(output.dtype)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        result = train_model(crops, smoke(40, lr=3e-3, precision=precision), tmp_path / "a")
    finally:
        hook.remove()
    assert conv_dtypes == {getattr(torch, precision)}
    assert result.precision == precision
    assert np.mean(result.losses[-8:]) < 0.8 * np.mean(result.losses[:8])
    assert json.loads((tmp_path / "a" / "training.json").read_text())["precision"] == precision
    weights = load_model(tmp_path / "a").model.state_dict().values()
    assert all(w.dtype in (torch.float32, torch.int64) for w in weights)


def test_sample_batch_keeps_raw_and_labels_aligned_under_augmentation() -> None:
    crop = bright_tubes((16, 40, 40))
    norm = Normalization((100.0,) * 3, (900.0,) * 3)
    prepared = [prepare_crop(crop, norm)]
    rng = np.random.default_rng(0)
    for _ in range(8):
        raw, target = sample_batch(prepared, (16, 32, 32), 2, rng)
        assert raw.shape == (2, 3, 16, 32, 32) and raw.dtype == torch.float32
        bright = raw.amax(dim=1) > 0.5
        assert torch.equal(bright, target.labels > 0)
        assert target.mask.any()


def test_augmentation_moves_a_neuron_between_channels_but_keeps_it_in_one() -> None:
    crop = bright_tubes((16, 32, 32))
    raw = np.zeros_like(crop.raw)
    raw[0][crop.labels > 0] = 900  # every tube expresses channel 0 alone
    one_colour = TrainingCrop(raw, crop.labels, crop.mask, crop.overlap)
    prepared = [prepare_crop(one_colour, Normalization((0.0,) * 3, (900.0,) * 3))]
    rng = np.random.default_rng(0)
    channels = set()
    for _ in range(12):
        batch, _ = sample_batch(prepared, (16, 32, 32), 1, rng)
        bright = (batch[0] > 0.5).flatten(1).sum(dim=1)
        assert int((bright > 0).sum()) == 1  # the neurons stay one colour
        channels.add(int(bright.argmax()))
    assert channels == {0, 1, 2}


def test_contacts_are_annotated_voxels_of_neurons_within_two_voxels() -> None:
    labels = np.zeros((1, 1, 12), np.int64)
    labels[0, 0, 0:3], labels[0, 0, 5:7], labels[0, 0, 10:12] = 1, 2, 3
    mask = np.ones(labels.shape, bool)
    # 1 ends at x=2 and 2 starts at x=5: three apart, no contact; 2 and 3 are 4 apart
    assert len(contacts(labels, mask)) == 0
    labels[0, 0, 3] = 1  # now 1 reaches x=3, two from neuron 2's first voxel
    assert contacts(labels, mask)[:, 2].tolist() == [3, 5]
    mask[0, 0, 5] = False  # an unannotated voxel touches nothing
    assert len(contacts(labels, mask)) == 0


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


def test_contact_fraction_places_patches_where_neurons_touch() -> None:
    shape = (8, 64, 64)
    labels = np.zeros(shape, np.uint32)
    labels[:, 50, 40:60], labels[:, 52, 40:60] = 1, 2  # they touch in one corner only
    crop = TrainingCrop(
        np.zeros((3, *shape), np.uint16), labels, np.ones(shape, bool), np.zeros(shape, bool)
    )
    prepared = [prepare_crop(crop, Normalization((0.0,) * 3, (1.0,) * 3), find_contacts=True)]

    def touching(fraction: float) -> list[bool]:
        rng = np.random.default_rng(0)
        batches = [sample_batch(prepared, (8, 16, 16), 2, rng, fraction)[1] for _ in range(20)]
        return [
            len(contacts(patch.numpy(), np.ones(patch.shape, bool))) > 0
            for target in batches
            for patch in target.labels
        ]

    assert all(touching(1.0))
    assert np.mean(touching(0.0)) < 0.3


def test_patches_larger_than_the_crop_are_padded_unannotated() -> None:
    prepared = [prepare_crop(bright_tubes((8, 16, 16)), Normalization((0.0,) * 3, (1.0,) * 3))]
    raw, target = sample_batch(prepared, (16, 16, 16), 1, np.random.default_rng(0))
    assert raw.shape == (1, 3, 16, 16, 16)
    assert int(target.mask.sum()) == 4 * 16 * 16  # 8 real z-slices, every other annotated


@pytest.mark.slow
def test_smoke_training_learns_saves_and_warm_starts(tmp_path: Path) -> None:
    crops = [bright_tubes(seed=0), bright_tubes(seed=1)]
    seen: list[tuple[int, int]] = []
    result = train_model(
        crops, smoke(40, lr=3e-3), tmp_path / "a", progress=lambda s, n, _: seen.append((s, n))
    )
    assert np.mean(result.losses[-8:]) < 0.8 * np.mean(result.losses[:8])
    assert seen[-1] == (40, 40) and len(result.losses) == 40
    assert {p.name for p in (tmp_path / "a").iterdir()} == set(CHECKPOINT_FILES)
    curve = json.loads((tmp_path / "a" / "training.json").read_text())
    assert curve["losses"] == pytest.approx(list(result.losses))

    trained = load_model(tmp_path / "a")
    asked = smoke(40, lr=3e-3)
    assert asked.model.in_channels == "auto"  # the checkpoint stores the data's number
    assert trained.config == asked.model_copy(update={"model": asked.model.with_channels(3)})
    assert trained.normalization.channels == 3
    assert trained.normalization.transform == trained.config.model.intensity == "sqrt"

    # a warm start with a vanishing learning rate keeps the weights it started from
    warm = train_model(crops, smoke(1, lr=1e-12), tmp_path / "b", init_from=tmp_path / "a")
    restarted = load_model(warm.checkpoint).model.state_dict()
    fresh = load_model(train_model(crops, smoke(1, lr=1e-12), tmp_path / "c").checkpoint)
    for name, value in trained.model.state_dict().items():
        if value.dtype.is_floating_point and "running" not in name:
            assert torch.allclose(restarted[name], value, atol=1e-6), name
    weight = "members.0.heads.out.weight"
    assert not torch.allclose(fresh.model.state_dict()[weight], restarted[weight])


@pytest.mark.slow
def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    crops = [bright_tubes()]
    first = train_model(crops, smoke(4, seed=3), tmp_path / "a")
    second = train_model(crops, smoke(4, seed=3), tmp_path / "b")
    other = train_model(crops, smoke(4, seed=4), tmp_path / "c")
    assert first.losses == second.losses
    assert first.losses != other.losses
    a, b = (load_model(p).model.state_dict() for p in (first.checkpoint, second.checkpoint))
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_warm_start_from_a_different_model_is_refused(tmp_path: Path) -> None:
    crops = [bright_tubes()]
    train_model(crops, smoke(1), tmp_path / "a")
    config = smoke(1)
    wider = config.model_copy(update={"model": config.model.model_copy(update={"embed_dim": 5})})
    with pytest.raises(InputError, match="warm-start"):
        train_model(crops, wider, tmp_path / "b", init_from=tmp_path / "a")


def test_sqrt_normalization_maps_square_roots_and_survives_save_and_load(tmp_path: Path) -> None:
    raw = np.array([[0, 100, 400, 10_000]] * 50, np.uint16).reshape(1, 1, 1, -1)
    norm = Normalization.from_volumes([raw], transform="sqrt")
    assert norm.lower[0] == pytest.approx(0.0) and norm.upper[0] == pytest.approx(100.0, rel=0.05)
    # linear would put 400 counts at 0.04 of the way up; sqrt at 0.2
    assert norm.apply(np.array([[400.0]]))[0, 0] == pytest.approx(20 / norm.upper[0])
    norm.save(tmp_path / "n.json")
    assert Normalization.load(tmp_path / "n.json") == norm


def test_normalization_without_a_transform_field_loads_as_linear(tmp_path: Path) -> None:
    (tmp_path / "n.json").write_text('{"lower": [1.0], "upper": [3.0]}')
    assert Normalization.load(tmp_path / "n.json") == Normalization((1.0,), (3.0,), "linear")
    (tmp_path / "bad.json").write_text('{"lower": [1.0], "upper": [3.0], "transform": "log"}')
    with pytest.raises(InputError, match=r"bad\.json"):
        Normalization.load(tmp_path / "bad.json")
