"""The fixed sets of choices a user picks from, as Enums: checked where they come in (the CLI
refuses a typo before anything runs or is stored, and completes them in the shell)."""

from __future__ import annotations

from enum import StrEnum


class Strategy(StrEnum):
    """How a round ranks the unlabeled crops ("random" is the baseline, "diverse" model-free)."""

    RANDOM = "random"
    DIVERSE = "diverse"
    UNCERTAINTY = "uncertainty"
    BALD = "bald"
    INSTANCE = "instance"


class Stage(StrEnum):
    """The stages of a round, in the order they run."""

    INGEST = "ingest"
    TRAIN = "train"
    EVALUATE = "evaluate"
    SCORE = "score"
    SELECT = "select"
    PUSH = "push"


class Format(StrEnum):
    """The file formats ``activeseg import`` reads."""

    FISBE = "fisbe"
    ZARR = "zarr"
    TIFF = "tiff"
    HDF5 = "hdf5"


class Split(StrEnum):
    """What a volume is for: the pool to label, validation, or test."""

    POOL = "pool"
    VAL = "val"
    TEST = "test"


class Samples(StrEnum):
    """What ``activeseg predict`` keeps of the model's samples: each one, their mean and
    variance ("moments"), or whichever fits the volume's size ("auto")."""

    AUTO = "auto"
    SAMPLES = "samples"
    MOMENTS = "moments"


class ExportFormat(StrEnum):
    """Where ``activeseg export`` puts labels: under an OME-Zarr image, or an ImageJ TIFF."""

    OME_ZARR = "ome-zarr"
    TIFF = "tiff"
