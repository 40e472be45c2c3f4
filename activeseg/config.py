"""One typed, validated config tree, loaded from YAML.

A project stores its resolved config as ``activeseg.yaml``; every round and every model
checkpoint keeps a copy of the config it ran with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activeseg.choices import Strategy
from activeseg.errors import ConfigError
from activeseg.resources import shipped_dir

Positive = Annotated[int, Field(ge=1)]
Triple = tuple[Positive, Positive, Positive]
# How raw intensities are transformed before percentile normalization.
Intensity = Literal["linear", "sqrt"]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CropConfig(Section):
    """How pool volumes are tiled into candidate crops (the unit of annotation)."""

    size: Triple = (32, 64, 64)
    stride: Triple = (32, 64, 64)
    # Crops whose bright-voxel fraction is below this are background and never offered.
    min_foreground: float = Field(0.002, ge=0.0, le=1.0)


class SynthConfig(Section):
    """Synthetic MCFO-like volumes for the demo and tests."""

    shape: Triple = (32, 128, 128)
    neurons: int = Field(8, ge=1)
    pool_volumes: int = Field(4, ge=1)
    val_volumes: int = Field(1, ge=0)
    seed: int = 0


class ModelConfig(Section):
    """The U-Net backbone and its probabilistic variant."""

    # single: one network; mheads: M heads on one backbone; ensemble: K single networks (kept
    # for old configs: kind single with members K is the same); dropout: MC dropout; bbb:
    # Bayes by Backprop (variational weights); probunet: probabilistic U-Net (Kohl et al. 2018).
    kind: Literal["single", "mheads", "ensemble", "dropout", "bbb", "probunet"] = "mheads"
    samples: int = Field(
        8, ge=1, description="M heads, K ensemble members, or passes / draws per member"
    )
    # Independently initialized and trained members, each of ``kind`` (an ensemble of
    # probabilistic models); their samples are pooled. kind ensemble sets it from samples.
    members: int = Field(1, ge=1, description="independently trained members of this kind")
    # "auto": the channel count of the project's first volume (fixed by it), or of the data
    # a model is first trained on.
    in_channels: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    intensity: Intensity = Field(
        "sqrt", description="transform before percentile normalization; sqrt evens photon noise"
    )
    widths: Annotated[tuple[Positive, ...], Field(min_length=1)] = (16, 32, 64)
    # One pooling factor per level transition; (1, 2, 2) keeps z for anisotropic data.
    pool: tuple[Triple, ...] = ((1, 2, 2), (2, 2, 2))
    embed_dim: int = Field(8, ge=2)
    groups: int = Field(4, ge=1, description="GroupNorm groups")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="channel dropout; kind dropout only")
    # Predicted scales: the foreground logit's variance and the embedding's pull scale
    # (Kendall & Gal 2017 loss attenuation).
    aleatoric: bool = False
    # mheads: mix the heads with shake-shake while training (Gastaldi 2017); false mixes them
    # with one random convex draw used both forward and backward.
    shake_shake: bool = True
    # mheads at test time: "heads" takes every head as a sample; "shake" draws ``samples``
    # random convex mixes of the heads (shake-shake draws as a sampler).
    sampler: Literal["heads", "shake"] = "heads"
    heads: int = Field(0, ge=0, description="M for sampler shake; 0 = samples")
    # bbb and probunet: the weight of the KL term (bbb: mean KL per weight to the prior;
    # probunet: KL of posterior to prior latent, per patch).
    kl_weight: float = Field(1.0, ge=0.0)
    prior_sigma: float = Field(0.1, gt=0, description="bbb: std of the Gaussian weight prior")
    latent_dim: int = Field(6, ge=1, description="probunet: latent dimensions")

    @property
    def shared_embedding(self) -> bool:
        """Whether all samples embed into one space (not so for independently trained members)."""
        return self.embedding_spaces == 1

    @property
    def embedding_spaces(self) -> int:
        """Return how many embedding spaces the samples come in: one per trained member."""
        return self.samples if self.kind == "ensemble" else self.members

    @model_validator(mode="after")
    def _members_of_one_kind(self) -> ModelConfig:
        if self.kind == "ensemble" and self.members != 1:
            raise ValueError(
                "model.kind ensemble takes its K members from model.samples; for an ensemble "
                "of probabilistic members set model.members with that kind"
            )
        return self

    @model_validator(mode="after")
    def _levels_match(self) -> ModelConfig:
        if len(self.pool) != len(self.widths) - 1:
            raise ValueError(
                f"model.pool needs one factor per level transition: {len(self.widths) - 1} "
                f"for widths {list(self.widths)}, got {len(self.pool)}"
            )
        return self

    def with_channels(self, channels: int) -> ModelConfig:
        """Return this section with ``in_channels: auto`` resolved to ``channels``."""
        if self.in_channels != "auto":
            return self
        return self.model_copy(update={"in_channels": channels})

    def divisor(self) -> Triple:
        """Return the per-axis factor every input size must be divisible by."""
        z, y, x = 1, 1, 1
        for pz, py, px in self.pool:
            z, y, x = z * pz, y * py, x * px
        return z, y, x


class LossConfig(Section):
    """Discriminative embedding loss (De Brabandere 2017) plus a foreground loss."""

    delta_v: float = Field(0.5, gt=0)
    delta_d: float = Field(1.5, gt=0)
    w_pull: float = 1.0
    w_push: float = 1.0
    w_reg: float = 0.001
    w_foreground: float = 1.0
    # 0.3: better end to end and a better embedding than 0 over paired seeds, though within
    # the seed spread, for a little more time per CPU step (see BENCHMARKS.md, Session 10).
    w_mask: float = Field(0.3, ge=0, description="weight of the soft instance-mask Dice term")
    foreground_dice: bool = True


class TrainConfig(Section):
    """Training on the labeled crops of the pool."""

    steps: int = Field(300, ge=1)
    # Small patches, two per step: many more steps per CPU minute, which is what the model
    # needs most. With batch 1, PyTorch runs small conv3d inputs on its slow native kernel
    # instead of oneDNN (profiled: a 16x64x64 step took longer than a 32x64x64 one); batch >= 2
    # always takes oneDNN (see BENCHMARKS.md, Session 4).
    batch_size: int = Field(2, ge=1)
    patch: Triple = (16, 48, 48)
    lr: float = Field(1e-3, gt=0)
    # Touching neurons are where the embedding merges instances: this share of patches is
    # placed to hold a voxel where two annotated neurons touch, the rest anywhere. Kept though
    # off: it helped short trainings like the loop's first rounds, but cost foreground at the
    # full budget (see BENCHMARKS.md, Session 11).
    contact_fraction: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = 0
    # Labels the annotator marked "unsure" stay out of training unless "include".
    unsure: Literal["exclude", "include"] = "exclude"
    warm_start: bool = True
    threads: int = Field(2, ge=1)
    # "auto" trains on the GPU when torch sees one; the checkpoint is the same either way.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto" runs the forward pass in bfloat16 where the processor computes it natively (a CPU
    # with AVX512-BF16 or AMX, a GPU with bf16): more steps per minute on this project's 2-core
    # EPYC at no loss of quality (see BENCHMARKS.md, Session 9); float32 elsewhere, where bf16
    # is slow.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # Semi-supervised: "consensus" adds the current model's confident consensus on unlabeled
    # pool crops as sparse pseudo-labels (voxels with mutual information at most
    # pseudo_max_uncertainty), on the pseudo_crops most confident crops. Off until a
    # benchmark shows it helps (see BENCHMARKS.md, label efficiency).
    pseudo_labels: Literal["none", "consensus"] = "none"
    pseudo_max_uncertainty: float = Field(0.02, ge=0.0)
    pseudo_crops: int = Field(4, ge=1)


class ClusterConfig(Section):
    """Mean-shift clustering of foreground embeddings into instances."""

    # The class-balanced foreground loss over-predicts (boundary voxels, mostly z neighbours of a
    # neuron). 0.9 scores better with well-trained models, but the short trainings of the
    # first rounds rarely reach it: 0.8 keeps them finding neurons (see BENCHMARKS.md,
    # Session 7).
    foreground_threshold: float = Field(0.8, gt=0, lt=1)
    # Gaussian mean shift found fewer false merges of touching neurons than a flat window on
    # the cached predictions of several models (see BENCHMARKS.md, Session 7).
    kernel: Literal["flat", "gaussian"] = "gaussian"
    # The kernel's standard deviation (gaussian) or radius (flat), in embedding units; it
    # follows the loss margins: about delta_v for gaussian, delta_v to delta_d for flat.
    bandwidth: float = Field(0.5, gt=0)
    min_size: int = Field(20, ge=0)
    max_seeds: int = Field(2000, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _bandwidth_without_kernel_is_flat(cls, data: Any) -> Any:
        """A config that sets a bandwidth but no kernel predates the Gaussian default: keep the
        flat window it was written for (a radius of 1.0 is far too wide as a sigma)."""
        if isinstance(data, dict) and "bandwidth" in data and "kernel" not in data:
            return {**data, "kernel": "flat"}
        return data

    def options(self) -> dict[str, Any]:
        """Return the keywords of :func:`activeseg.core.cluster.segment` this section sets."""
        return {
            "threshold": self.foreground_threshold,
            "bandwidth": self.bandwidth,
            "kernel": self.kernel,
            "min_size": self.min_size,
            "max_seeds": self.max_seeds,
        }


class AcquisitionConfig(Section):
    """How unlabeled crops are scored and a batch is selected each round."""

    # "random" is the baseline; "diverse" is model-free k-center, e.g. for round 0.
    strategy: Strategy = Strategy.INSTANCE
    reduction: Literal["mean", "quantile", "region", "instance_sum"] = "quantile"
    quantile: float = Field(0.9, ge=0.0, le=1.0, description='q of reduction "quantile"')
    region: Triple = Field((4, 8, 8), description='window (z, y, x) of reduction "region"')
    batch_size: int = Field(4, ge=1)
    diversity: bool = True
    cost_aware: bool = False
    cost_alpha: float = Field(1.0, ge=0.0, description="score / cost**alpha when cost_aware")
    seed: int = 0
    # Crops scored per round: a seeded sample of the unlabeled pool crops, stratified by volume
    # (each volume in proportion to its unlabeled crops). None scores every unlabeled crop.
    max_candidates: int | None = Field(
        None, ge=1, description="crops scored per round (a stratified sample); None = all"
    )


class LabelStudioConfig(Section):
    """What a Label Studio task shows (connection details come from the environment)."""

    slices: int = Field(4, ge=1, description="z-slices shown per crop")
    project_title: str = Field("activeseg", min_length=3)
    # One brush label value per instance id (n1..nK): ids above K cannot be pre-annotated.
    max_instances: int = Field(32, ge=1, le=1000, description="brush labels n1..nK offered")
    overlay_vmax: float | None = Field(
        None, gt=0, description="uncertainty at full overlay colour; None = per crop maximum"
    )
    # "inline": data URIs in the task data, one request for everything: fast, and fine for
    # crop-sized slices, but every task listing carries them. "upload": files on the server, a
    # smaller database, but each file is a server-side commit, several times slower (see
    # BENCHMARKS.md, Push and ingest).
    images: Literal["inline", "upload"] = "inline"


class NoiseConfig(Section):
    """How careless the simulated annotator is (all off: it copies the truth exactly)."""

    drop_below: int = Field(0, ge=0, description="fragments under this many voxels are missed")
    jitter: float = Field(0.0, ge=0.0, le=1.0, description="share of boundaries a voxel off")
    merge: float = Field(0.0, ge=0.0, le=1.0, description="share of touching pairs merged")


class LoopConfig(Section):
    """Who answers the tasks a round pushes."""

    # "labelstudio": real annotators in Label Studio; "simulated": answered from hidden truth;
    # "file": crops queued in the pool only, labels from `activeseg ingest --from-file`.
    annotator: Literal["labelstudio", "simulated", "file"] = "labelstudio"
    # Round 0 has no model: a model-free strategy picks the first batch.
    first_strategy: Literal["random", "diverse"] = "diverse"
    # The simulated annotator's noise (benchmarks turn on a realistic one).
    noise: NoiseConfig = NoiseConfig()
    # The stopping signal says "stop" once one more round is expected to add less validation
    # avF1 than this (see `activeseg history`).
    stop_gain: float = Field(0.005, ge=0.0)


class EvaluateConfig(Section):
    """How a round scores its model on the validation volumes."""

    # "fisbe": the FISBe benchmark's protocol (predicted instances of at most 800 voxels are
    # dropped first), for FlyLight data; "plain": every predicted instance counts.
    protocol: Literal["plain", "fisbe"] = "plain"


class ComputeConfig(Section):
    """Where prediction, pool scoring and training run; the defaults run in this process.

    Results do not depend on it: a cluster computes what one process would, to the bit (see
    README, Running on a cluster).
    """

    # A running Dask scheduler ("tcp://host:8786") that predict and score send their tiles and
    # crops to; its workers must see the project root at the same path.
    scheduler: str | None = Field(None, pattern=r"^(tcp|tls|inproc|ucx)://.+")
    # Without a scheduler: this many worker processes on this machine (0 = no Dask at all).
    workers: int = Field(0, ge=0)
    # Training processes (DistributedDataParallel on one host); the global batch is split.
    train_processes: int = Field(1, ge=1)


class Config(Section):
    """The whole configuration of a project."""

    crops: CropConfig = CropConfig()
    synth: SynthConfig = SynthConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    cluster: ClusterConfig = ClusterConfig()
    acquisition: AcquisitionConfig = AcquisitionConfig()
    labelstudio: LabelStudioConfig = LabelStudioConfig()
    loop: LoopConfig = LoopConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compute: ComputeConfig = ComputeConfig()

    @model_validator(mode="after")
    def _sizes_fit_the_unet(self) -> Config:
        divisor = self.model.divisor()
        for name, size in (("crops.size", self.crops.size), ("train.patch", self.train.patch)):
            if any(s % d for s, d in zip(size, divisor, strict=True)):
                raise ValueError(
                    f"{name} {list(size)} must be divisible by {list(divisor)} per axis "
                    f"(the U-Net's pooling, model.pool)"
                )
        if any(p > c for p, c in zip(self.train.patch, self.crops.size, strict=True)):
            raise ValueError(
                f"train.patch {list(self.train.patch)} is larger than crops.size "
                f"{list(self.crops.size)}"
            )
        return self

    def to_yaml(self) -> str:
        """Return the config as YAML text (what projects and checkpoints store)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


BUILTIN_CONFIGS = ("default", "demo", "flylight", "smoke")


def builtin_config_path(name: str) -> Path:
    """Return the path of a config shipped with activeseg (``default``, ``demo``, ...)."""
    return shipped_dir("configs") / f"{name}.yaml"


def load_config(source: str | Path) -> Config:
    """Load and validate a config from a YAML file path or a built-in config name."""
    path = builtin_config_path(str(source)) if str(source) in BUILTIN_CONFIGS else Path(source)
    try:
        data: Any = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return parse_config(data, origin=str(path))


# Research options removed because no benchmark gained from them, with the value they had by
# default. Projects and checkpoints store their resolved config, so those written before the
# removal name them at that value, which changes nothing; any other value is an error.
RETIRED: dict[tuple[str, str], object] = {
    ("loss", "contact_weight"): 0.0,
    ("loss", "embed_background"): False,
    ("loss", "foreground_pos_weight"): None,
}


def parse_config(data: dict[str, Any], origin: str = "<config>") -> Config:
    """Validate a config mapping; errors name the field and the origin file."""
    data = _without_retired(data, origin)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid config {origin}: {problems}") from exc


def _without_retired(data: dict[str, Any], origin: str) -> dict[str, Any]:
    """Return data without the RETIRED keys that hold their old default value.

    Raises ConfigError for a retired key set to anything else: what it asked for is gone.
    """
    cleaned = dict(data)
    for (section, field), default in RETIRED.items():
        values = data.get(section)
        if not isinstance(values, dict) or field not in values:
            continue
        if values[field] != default:
            raise ConfigError(
                f"invalid config {origin}: {section}.{field} was removed (no benchmark gained "
                f"from it, see BENCHMARKS.md); delete it"
            )
        cleaned[section] = {k: v for k, v in cleaned[section].items() if k != field}
    return cleaned
