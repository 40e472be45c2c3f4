"""Pseudo-labeled crops for training (``train.pseudo_labels: consensus``).

The unlabeled pool crops that the current model scored (the score cache holds their maps
under the model's fingerprint) become extra training crops, labeled with the model's
confident consensus (:func:`activeseg.core.pseudo.pseudo_labels`). Keyed by the model, they
are derived again after every training; crops a person labeled or is labeling never take part.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from activeseg.core.pseudo import pseudo_labels
from activeseg.core.training import TrainingCrop
from activeseg.data.volumes import read_raw
from activeseg.pool import rounds as pool_rounds
from activeseg.pool import volumes as pool_volumes
from activeseg.workflows.project import Project
from activeseg.workflows.score import model_key, read_analysis

log = logging.getLogger(__name__)


def pseudo_crops(project: Project, model_path: Path | None) -> list[TrainingCrop]:
    """Return up to ``train.pseudo_crops`` pseudo-labeled unlabeled crops of ``model_path``'s
    scores, the most confident (lowest BALD) first; none when off or without a model.

    model_path: the model this training starts from (the warm start): its scores exist.
    """
    train = project.config.train
    if train.pseudo_labels == "none" or model_path is None:
        return []
    key = model_key(model_path, project.config)
    with project.session() as session:
        cache = pool_rounds.cached_scores(session, key)
        unlabeled = pool_volumes.list_crops(session, status="unlabeled", split="pool")
        volumes = {v.id: v for v in pool_volumes.list_volumes(session)}
    scored = [c for c in unlabeled if c.id in cache and cache[c.id].analysis]
    scored.sort(key=lambda c: float(cache[c.id].parts.get("bald", math.inf)))
    crops = []
    for crop in scored[: train.pseudo_crops]:
        maps = project.resolve(str(cache[crop.id].analysis))
        pseudo = pseudo_labels(
            read_analysis(maps, "consensus"),
            read_analysis(maps, "mutual_information"),
            read_analysis(maps, "foreground"),
            max_uncertainty=train.pseudo_max_uncertainty,
            threshold=project.config.cluster.foreground_threshold,
        )
        if not pseudo.labels.any():
            continue
        crops.append(
            TrainingCrop(
                raw=read_raw(project.resolve(volumes[crop.volume_id].path), crop.box),
                labels=pseudo.labels,
                mask=pseudo.mask,
                overlap=np.zeros(pseudo.mask.shape, bool),
                name=f"pseudo-labeled crop {crop.id}",
            )
        )
    log.info("pseudo-labels on %d unlabeled crops", len(crops))
    return crops
