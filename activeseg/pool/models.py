"""SQLAlchemy ORM models of the pool ledger. ORM objects never leave ``activeseg.pool``.

Arrays live in zarr on disk; the database holds rows that point at them by path.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from activeseg.choices import Split

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Return the current time in UTC (timezone-aware)."""
    return datetime.now(UTC)


def clip(text: str | None, column: Any) -> str | None:
    """Return free text cut to fit ``column`` (PostgreSQL refuses what SQLite would keep)."""
    length = getattr(column.type, "length", None)
    return text if text is None or length is None else text[:length]


class UTCDateTime(TypeDecorator[datetime]):
    """Store naive UTC (SQLite keeps no zone) and hand back timezone-aware datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class CropStatus(enum.StrEnum):
    UNLABELED = "unlabeled"
    QUEUED = "queued"
    LABELED = "labeled"
    SKIPPED = "skipped"


class StageStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        values_callable=lambda e: [m.value for m in e],
        native_enum=False,
        validate_strings=True,
    )


class Volume(Base):
    __tablename__ = "volume"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    path: Mapped[str] = mapped_column(String(1000))
    split: Mapped[Split] = mapped_column(_enum(Split, "split"))
    channels: Mapped[int] = mapped_column(Integer)
    shape: Mapped[list[Any]] = mapped_column()
    voxel_size: Mapped[list[Any]] = mapped_column()
    has_ground_truth: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    crops: Mapped[list[Crop]] = relationship(back_populates="volume")


class Crop(Base):
    __tablename__ = "crop"
    __table_args__ = (
        UniqueConstraint("volume_id", "z0", "y0", "x0", name="uq_crop_volume_origin"),
        CheckConstraint("z1 > z0 AND y1 > y0 AND x1 > x0", name="positive_size"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    volume_id: Mapped[int] = mapped_column(ForeignKey("volume.id", ondelete="CASCADE"), index=True)
    z0: Mapped[int]
    y0: Mapped[int]
    x0: Mapped[int]
    z1: Mapped[int]
    y1: Mapped[int]
    x1: Mapped[int]
    foreground: Mapped[float] = mapped_column(Float, doc="bright-voxel fraction at tiling time")
    status: Mapped[CropStatus] = mapped_column(
        _enum(CropStatus, "crop_status"), default=CropStatus.UNLABELED, index=True
    )
    labeled_round: Mapped[int | None] = mapped_column(Integer)
    skip_reason: Mapped[str | None] = mapped_column(String(500))
    # The current label zarr (crop coordinates); None until labeled.
    label_path: Mapped[str | None] = mapped_column(String(1000))

    volume: Mapped[Volume] = relationship(back_populates="crops")


class Round(Base):
    __tablename__ = "round"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    strategy: Mapped[str] = mapped_column(String(50))
    batch_size: Mapped[int] = mapped_column(Integer)
    config: Mapped[str] = mapped_column(String, doc="resolved config snapshot (YAML)")
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    abandoned: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")

    stages: Mapped[list[Stage]] = relationship(back_populates="round", order_by="Stage.id")


class Stage(Base):
    __tablename__ = "stage"
    __table_args__ = (UniqueConstraint("round_id", "name", name="uq_stage_round_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("round.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(20))
    status: Mapped[StageStatus] = mapped_column(_enum(StageStatus, "stage_status"))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(String)

    round: Mapped[Round] = relationship(back_populates="stages")


class Checkpoint(Base):
    __tablename__ = "checkpoint"

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("round.id", ondelete="SET NULL"))
    path: Mapped[str] = mapped_column(String(1000), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    steps: Mapped[int] = mapped_column(Integer)
    labeled_crops: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Score(Base):
    __tablename__ = "score"
    __table_args__ = (UniqueConstraint("round_id", "crop_id", name="uq_score_round_crop"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("round.id", ondelete="CASCADE"), index=True)
    crop_id: Mapped[int] = mapped_column(ForeignKey("crop.id", ondelete="CASCADE"), index=True)
    score: Mapped[float] = mapped_column(Float)
    parts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rank: Mapped[int | None] = mapped_column(Integer)
    selected: Mapped[bool] = mapped_column(Boolean, default=False)


class ScoreCache(Base):
    """A crop's score parts under one model (checkpoint + scoring settings), kept across rounds.

    ``model`` is a content fingerprint: a new checkpoint has another, so it never reuses these.
    ``analysis`` is the project-relative zarr of the maps computed with the scores.
    """

    __tablename__ = "score_cache"
    __table_args__ = (UniqueConstraint("crop_id", "model", name="uq_score_cache_crop_model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    crop_id: Mapped[int] = mapped_column(ForeignKey("crop.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(64), index=True)
    parts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    analysis: Mapped[str | None] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Task(Base):
    __tablename__ = "task"
    __table_args__ = (
        # One active task per crop: a crop is in Label Studio at most once at a time.
        Index(
            "uq_task_active_crop",
            "crop_id",
            unique=True,
            sqlite_where=text("active = 1"),
            postgresql_where=text("active"),
        ),
        # Label Studio reuses the ids of deleted tasks: unique among active tasks only.
        Index(
            "uq_task_active_ls_task_id",
            "ls_task_id",
            unique=True,
            sqlite_where=text("active = 1"),
            postgresql_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    crop_id: Mapped[int] = mapped_column(ForeignKey("crop.id", ondelete="CASCADE"), index=True)
    round_id: Mapped[int | None] = mapped_column(ForeignKey("round.id", ondelete="SET NULL"))
    ls_project_id: Mapped[int | None] = mapped_column(Integer)
    ls_task_id: Mapped[int | None] = mapped_column(Integer)
    slices: Mapped[list[Any]] = mapped_column(doc="z-slices (crop coordinates) shown")
    pushed: Mapped[dict[str, Any]] = mapped_column(default=dict, doc="what was pushed")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    annotations: Mapped[list[Annotation]] = relationship(back_populates="task")


class Annotation(Base):
    __tablename__ = "annotation"
    __table_args__ = (
        UniqueConstraint("task_id", "ls_annotation_id", "updated_at", name="uq_annotation_version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("task.id", ondelete="CASCADE"), index=True)
    ls_annotation_id: Mapped[int | None] = mapped_column(Integer)
    annotator: Mapped[str | None] = mapped_column(String(200))
    lead_time: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    label_path: Mapped[str | None] = mapped_column(String(1000))
    was_cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The annotator's status choice ("done", "unsure"); unsure labels stay out of training.
    status: Mapped[str | None] = mapped_column(String(20))
    # Superseded versions stay as history; exactly the newest one is current.
    current: Mapped[bool] = mapped_column(Boolean, default=True)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # What it cost the annotator (None where not measured): slices and voxels shown, voxels
    # repainted from the pre-annotation, instances added, removed, split and merged.
    cost_slices: Mapped[int | None] = mapped_column(Integer)
    cost_voxels: Mapped[int | None] = mapped_column(Integer)
    cost_repainted: Mapped[int | None] = mapped_column(Integer)
    cost_added: Mapped[int | None] = mapped_column(Integer)
    cost_removed: Mapped[int | None] = mapped_column(Integer)
    cost_split: Mapped[int | None] = mapped_column(Integer)
    cost_merged: Mapped[int | None] = mapped_column(Integer)

    task: Mapped[Task] = relationship(back_populates="annotations")


class Setting(Base):
    """Project-level key/value facts (the Label Studio project id, the last ingest time)."""

    __tablename__ = "setting"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String)
