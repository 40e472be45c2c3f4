"""Evaluating a model on the project's validation volumes (never on training crops)."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr

from activeseg.config import ClusterConfig
from activeseg.core import metrics
from activeseg.core.cluster import segment_consensus, segment_samples
from activeseg.core.instances import Instances
from activeseg.core.models.checkpoint import TrainedModel, load_model
from activeseg.core.stitching import Box
from activeseg.core.streaming_metrics import UncertaintyTables
from activeseg.core.tiling import UNCERTAINTY, predict_array, predict_to_zarr
from activeseg.core.uncertainty import InstanceRisk, instance_uncertainty, mutual_information
from activeseg.data.fisbe import GT_INSTANCES
from activeseg.data.importers import load_tiff, ome_label_dataset
from activeseg.data.sources import label_source
from activeseg.data.volumes import GT_PATH, raw_array, read_ground_truth, read_raw
from activeseg.errors import InputError, VolumeFormatError
from activeseg.pool import volumes as pool_volumes
from activeseg.pool.records import VolumeInfo
from activeseg.workflows.predict import (
    CONSENSUS,
    guess_format,
    prediction_maps,
    resolve_volume,
    write_consensus,
)
from activeseg.workflows.project import Project

log = logging.getLogger(__name__)

# Predictions whose float32 samples (foreground and embedding) take at most this many bytes
# (a demo volume: 151 MB) are evaluated whole, as always; larger ones are predicted, clustered
# and judged chunk by chunk.
IN_MEMORY_BYTES = 2**28
# z-planes per slab of the chunk-by-chunk evaluation.
SLAB_DEPTH = 16
QUALITY_KEYS = ("voxel_error_auroc", "instance_error_auroc", "scored_instances",
                "erroneous_instances")  # fmt: skip


def evaluate_project(project: Project, model_path: Path) -> dict[str, Any]:
    """Return validation metrics of a model over the project's val volumes with ground truth.

    Instance counts are summed over volumes before F1 is computed (with the FISBe protocol
    when ``evaluate.protocol`` says so); uncertainty quality (error-detection AUROC of voxel
    MI and of instance risk) is reported beside them.
    """
    with project.session() as session:
        volumes = [v for v in pool_volumes.list_volumes(session, split="val") if v.has_ground_truth]
    if not volumes:
        return {"skipped": "no validation volume with ground truth"}
    trained = load_model(model_path)
    fisbe = project.config.evaluate.protocol == "fisbe"
    scores, quality = [], []
    for volume in volumes:  # scored one at a time: no two volumes' labels are held at once
        prediction, truth, uncertainty = _predict_volume(project, trained, volume)
        scores.append(metrics.score_volume(prediction, truth, fisbe=fisbe))
        quality.append(uncertainty)
    result: dict[str, Any] = metrics.summarize(scores)
    for key in ("voxel_error_auroc", "instance_error_auroc"):
        values = [q[key] for q in quality if np.isfinite(q[key])]
        result[key] = float(np.mean(values)) if values else float("nan")
    result["volumes"] = [v.name for v in volumes]
    return result


def fits_in_memory(trained: TrainedModel, shape: tuple[int, ...]) -> bool:
    """Return whether the float32 samples (foreground and embedding) of a (Z, Y, X) volume
    fit IN_MEMORY_BYTES: such volumes are evaluated whole, larger ones slab by slab."""
    per_voxel = trained.model.n_samples * (trained.config.model.embed_dim + 1) * 4
    return int(np.prod(shape)) * per_voxel <= IN_MEMORY_BYTES


def _predict_volume(
    project: Project, trained: TrainedModel, volume: VolumeInfo
) -> tuple[Instances, Instances, dict[str, float]]:
    path = project.resolve(volume.path)
    raw = raw_array(path)
    if not fits_in_memory(trained, tuple(raw.shape[1:])):
        return _predict_volume_streamed(project, trained, path, volume.name)
    prediction = predict_array(trained, read_raw(path), threads=project.config.train.threads)
    options = project.config.cluster.options()
    spaces = trained.config.model.embedding_spaces
    consensus = segment_consensus(
        prediction.foreground, prediction.embedding, spaces=spaces, **options
    )
    samples = segment_samples(prediction.foreground, prediction.embedding, **options)
    truth = read_ground_truth(path)
    predicted = Instances.from_labels(consensus)
    mi = mutual_information(prediction.foreground)
    risks = instance_uncertainty(consensus, samples)
    quality = uncertainty_quality(consensus, truth.labels, mi, risks)
    log.info("evaluated %s", volume.name)
    return predicted, truth, quality


def _predict_volume_streamed(
    project: Project, trained: TrainedModel, path: Path, name: str
) -> tuple[Instances, Instances, dict[str, float]]:
    """Return what _predict_volume does for a volume too large for memory: predicted to a
    scratch zarr tile by tile, clustered block by block, its uncertainty judged slab by slab.
    The instance-risk AUROC needs every sample clustered over the whole volume: it is NaN."""
    with tempfile.TemporaryDirectory(prefix=".evaluate-", dir=project.root) as scratch:
        out = Path(scratch) / "prediction.zarr"
        predict_to_zarr(trained, raw_array(path), out, threads=project.config.train.threads)
        spaces = trained.config.model.embedding_spaces
        write_consensus(out, project.config.cluster, spaces=spaces, compute=project.config.compute)
        group = zarr.open_group(str(out), mode="r")
        consensus = np.asarray(zarr.open_array(str(out), path=CONSENSUS, mode="r")[...], np.uint32)
        truth = read_ground_truth(path)
        report = streamed_uncertainty(group, consensus, truth.labels)
    quality = {key: report[key] for key in QUALITY_KEYS}
    log.info("evaluated %s slab by slab", name)
    return Instances.from_labels(consensus), truth, quality


def streamed_uncertainty(
    group: zarr.Group, consensus: npt.NDArray[np.uint32], truth: npt.NDArray[np.uint32]
) -> dict[str, Any]:
    """Return uncertainty_report's metrics of a prediction group, read z-slab by z-slab.

    group: an ``activeseg predict`` output (samples or moments; its mutual_information map, or
    per-sample foreground to compute it); consensus, truth: (Z, Y, X) label images. Voxel
    AUROC and PAvPU thresholds come from histograms (see core.streaming_metrics); instance
    risks are not computed (their AUROC is NaN, ``instance_risk`` says why). The reliability
    diagram is returned under ``_reliability``.
    """
    lookup = _matched_truth(consensus, truth)
    maps = prediction_maps(group)
    tables = UncertaintyTables()
    depth, height, width = consensus.shape
    for z0 in range(0, depth, SLAB_DEPTH):
        box = (slice(z0, min(z0 + SLAB_DEPTH, depth)), slice(0, height), slice(0, width))
        labels = consensus[box]
        tables.add(lookup[labels], truth[box], _uncertainty_slab(group, box), maps.foreground(box),
                   labels)  # fmt: skip
    errors = _erroneous_instances(consensus, truth)
    return {
        "voxel_error_auroc": tables.voxel_auroc(),
        "instance_error_auroc": float("nan"),
        "scored_instances": 0.0,
        "erroneous_instances": float(sum(errors.values())),
        "instance_risk": "not computed for a volume evaluated slab by slab",
        **_pavpu_entries(tables.pavpu()),
        "ECE": tables.ece(),
        "_reliability": tables.reliability(),
    }


def _uncertainty_slab(group: zarr.Group, box: Box) -> npt.NDArray[np.float32]:
    """Return the voxel mutual information of a box: stored, or from per-sample foreground."""
    if UNCERTAINTY in group:
        return np.asarray(group[UNCERTAINTY][box], dtype=np.float32)  # type: ignore[index]
    if "foreground" in group:
        samples = group["foreground"][(slice(None), *box)]  # type: ignore[index]
        return mutual_information(np.asarray(samples, dtype=np.float32))
    raise InputError(
        f"{group.store_path} holds neither an uncertainty map ({UNCERTAINTY}) nor per-sample "
        f"foreground: predict it again with `activeseg predict`"
    )


def _matched_truth(
    consensus: npt.NDArray[np.uint32], truth: npt.NDArray[np.uint32]
) -> npt.NDArray[np.int64]:
    """Return, indexed by predicted id, the true id it overlaps most; 0 maps to 0.

    consensus, truth: (Z, Y, X) label images; ids need not be contiguous. The result has
    ``consensus.max() + 1`` entries. A predicted instance that overlaps no true neuron maps to
    -1, not to background: its voxels are foreground where there is none, so they are wrong.
    """
    table = metrics.contingency_table(consensus, truth)
    pred_ids, true_ids = _present_ids(consensus), _present_ids(truth)
    lookup = np.full(int(consensus.max(initial=0)) + 1, -1, np.int64)
    lookup[0] = 0
    if len(pred_ids) and len(true_ids):
        overlaps = table[1:, 1:]
        hit = overlaps.max(axis=1) > 0
        lookup[pred_ids[hit]] = true_ids[overlaps.argmax(axis=1)[hit]]
    return lookup


def _present_ids(labels: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
    """Return the sorted non-zero ids of a label image: the order of a contingency table."""
    ids = np.unique(labels)
    return ids[ids != 0].astype(np.int64)


def _erroneous_instances(
    consensus: npt.NDArray[np.uint32], truth: npt.NDArray[np.uint32], iou_threshold: float = 0.5
) -> dict[int, bool]:
    """Return, per predicted id, whether it is unmatched (IoU < threshold), a split or a merge."""
    table = metrics.contingency_table(consensus, truth).astype(np.float64)
    pred_size, true_size = table.sum(axis=1), table.sum(axis=0)
    iou = table / np.maximum(pred_size[:, None] + true_size[None, :] - table, 1)
    covers = table / np.maximum(true_size[None, :], 1) >= 0.2  # pred covers 20% of a truth
    inside = table / np.maximum(pred_size[:, None], 1) >= 0.2  # 20% of pred lies in a truth
    split_truths = covers[1:, 1:].sum(axis=0) >= 2
    errors = {}
    # Table rows 1.. follow the sorted predicted ids, which need not be 1, 2, ...
    for row, pred_id in enumerate(_present_ids(consensus), start=1):
        merge = inside[row, 1:].sum() >= 2
        split = bool((covers[row, 1:] & split_truths).any())
        errors[int(pred_id)] = bool(iou[row, 1:].max(initial=0) < iou_threshold or merge or split)
    return errors


def uncertainty_quality(
    consensus: npt.NDArray[np.uint32],
    truth: npt.NDArray[np.uint32],
    mutual_info: npt.NDArray[np.float32],
    risks: Sequence[InstanceRisk],
) -> dict[str, float]:
    """Return how well uncertainty points at errors: voxel-MI and instance-risk AUROC.

    consensus, truth: (Z, Y, X) label images; mutual_info: (Z, Y, X). A voxel is wrong when
    its foreground call or its instance (mapped to the best-overlapping true neuron) is wrong.
    The counts of scored instances and of erroneous ones say why an AUROC is NaN.
    """
    mapped = _matched_truth(consensus, truth)[consensus]
    voxel_error = mapped != truth
    errors = _erroneous_instances(consensus, truth)
    scored = [
        (r.uncertainty + r.split_risk + r.merge_risk, errors[int(r.id)])
        for r in risks
        if int(r.id) in errors
    ]
    instance = (
        metrics.auroc([s for s, _ in scored], [e for _, e in scored]) if scored else float("nan")
    )
    return {
        "voxel_error_auroc": metrics.auroc(mutual_info.ravel(), voxel_error.ravel()),
        "instance_error_auroc": instance,
        "scored_instances": float(len(scored)),
        "erroneous_instances": float(sum(e for _, e in scored)),
    }


def uncertainty_report(
    consensus: npt.NDArray[np.uint32],
    truth: npt.NDArray[np.uint32],
    foreground: npt.NDArray[np.float32],
    risks: Sequence[InstanceRisk],
    *,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Return the uncertainty quality of one prediction: error AUROCs, PAvPU and ECE.

    consensus, truth: (Z, Y, X) label images; foreground: (S, Z, Y, X) float per-sample
    foreground probability; risks: ``instance_uncertainty`` of consensus. PAvPU uses voxel
    mutual information on patches that hold predicted or true foreground, judged by the
    accuracy of those voxels (neurons fill a few percent of a volume: judged on all voxels,
    every patch is accurate). threshold: the MI level above which a patch is uncertain, chosen
    beforehand on validation volumes (``choose_pavpu_threshold``), as Mukhoti & Gal do; None
    takes the best of a sweep of this prediction's own MI quantiles, which is optimistic. ECE
    is that of the sample mean foreground probability against the true foreground.
    """
    mi = mutual_information(foreground)
    quality = uncertainty_quality(consensus, truth, mi, risks)
    if threshold is None:
        curve = pavpu_curve(consensus, truth, mi, np.quantile(mi, [0.5, 0.8, 0.9, 0.95, 0.99]))
        entries = _pavpu_entries(curve)
    else:
        curve = pavpu_curve(consensus, truth, mi, [threshold])
        entries = _pavpu_entries(curve) | {"PAvPU_threshold_from": "validation"}
    return quality | entries | {"ECE": metrics.ece(foreground.mean(axis=0), truth > 0)}


# PAvPU curves over the threshold are drawn at this many quantiles of the uncertainty.
CURVE_LEVELS = 41


def pavpu_curve(
    consensus: npt.NDArray[np.uint32],
    truth: npt.NDArray[np.uint32],
    uncertainty: npt.NDArray[np.float32],
    thresholds: npt.ArrayLike | None = None,
) -> metrics.PavpuCurve:
    """Return PAvPU, p(accurate | certain) and p(uncertain | inaccurate) per threshold.

    consensus, truth: (Z, Y, X) label images; uncertainty: (Z, Y, X) float voxel map.
    thresholds: (T,) levels; None: CURVE_LEVELS quantiles of the uncertainty from 0 to 1.
    """
    accurate = _matched_truth(consensus, truth)[consensus] == truth
    if thresholds is None:
        thresholds = np.unique(np.quantile(uncertainty, np.linspace(0, 1, CURVE_LEVELS)))
    relevant = (consensus > 0) | (truth > 0)
    return metrics.pavpu(accurate, uncertainty, thresholds, relevant=relevant)


def choose_pavpu_threshold(curve: metrics.PavpuCurve) -> float:
    """Return the threshold of a (validation) curve with the highest PAvPU."""
    if not np.isfinite(curve.pavpu).any():
        return float(curve.thresholds[len(curve.thresholds) // 2])
    return float(curve.thresholds[int(np.nanargmax(curve.pavpu))])


def plot_pavpu_curves(curve: metrics.PavpuCurve, path: Path, chosen: float | None = None) -> Path:
    """Draw PAvPU, p(accurate | certain) and p(uncertain | inaccurate) over the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(5, 3.6))
    for values, label in (
        (curve.pavpu, "PAvPU"),
        (curve.p_accurate_given_certain, "p(accurate | certain)"),
        (curve.p_uncertain_given_inaccurate, "p(uncertain | inaccurate)"),
    ):
        axis.plot(curve.thresholds, values, marker=".", label=label)
    if chosen is not None:
        axis.axvline(chosen, color="gray", linestyle="--", label="chosen threshold")
    axis.set(xlabel="uncertainty threshold (voxel MI, bits)", ylabel="fraction", ylim=(0, 1.02))
    axis.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _pavpu_entries(curve: metrics.PavpuCurve) -> dict[str, Any]:
    """Return the report's PAvPU entries: the best threshold of the sweep, and the sweep."""
    best = int(np.nanargmax(curve.pavpu)) if np.isfinite(curve.pavpu).any() else 0
    return {
        "PAvPU": float(curve.pavpu[best]),
        "PAvPU_threshold": float(curve.thresholds[best]),
        "p_accurate_given_certain": float(curve.p_accurate_given_certain[best]),
        "p_uncertain_given_inaccurate": float(curve.p_uncertain_given_inaccurate[best]),
        "PAvPU_sweep": {
            f"{t:.4g}": float(v) for t, v in zip(curve.thresholds, curve.pavpu, strict=True)
        },
    }


# Names of a label array inside a zarr or HDF5 file, tried in order when no key is given.
LABEL_NAMES = (CONSENSUS, "consensus", "labels", "segmentation", "label", "gt_instances", "gt")


def load_instances(
    spec: str, project: Project | None, labels_key: str | None = None
) -> tuple[Instances, Path | None]:
    """Return the instances named by ``spec`` and the file they came from.

    spec: a registered volume's name (its ground truth), or a file holding labels, with or
    without an image: a FISBe-layout zarr (``volumes/gt_instances``), an activeseg volume, the
    output of ``activeseg predict`` (its consensus), a zarr label array or group, a label TIFF,
    or an HDF5 file. labels_key names the label dataset inside a zarr group or HDF5 file; a
    4-D dataset is a stack of one mask per instance (as FISBe stores them).
    """
    path = resolve_volume(project, spec)
    return read_labels(path, labels_key), path


def read_labels(path: Path, key: str | None = None) -> Instances:
    """Return the instances stored in a labels file (see :func:`load_instances`)."""
    if key and (key.startswith("/") or ".." in Path(key).parts):
        raise InputError(f"dataset key {key!r} points outside {path}")
    fmt = guess_format(path)
    if fmt == "tiff":
        return _whole(load_tiff(path), str(path))
    if fmt == "hdf5":
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                return _whole(_label_dataset(path, handle, key), f"{path}:{key or 'labels'}")
        except OSError as exc:
            raise VolumeFormatError(f"{path} is not a readable HDF5 file: {exc}") from exc
    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return _whole(node, str(path))
    if key is None and GT_INSTANCES in node:
        return _whole(node[GT_INSTANCES], f"{path}:{GT_INSTANCES}")
    if key is None and f"{GT_PATH}/0" in node:
        return read_ground_truth(path)
    if key is None and (dataset := ome_label_dataset(node)) is not None:
        return _whole(node[dataset], f"{path}:{dataset}")  # crop labels, an OME label image
    return _whole(_label_dataset(path, node, key), f"{path}:{key or 'labels'}")


def _label_dataset(path: Path, container: Any, key: str | None) -> Any:
    """Return the label dataset ``key`` of a zarr group or HDF5 file, or the first of
    LABEL_NAMES (at the top or under volumes/) it holds."""
    names = [key] if key else [f"{p}{n}" for n in LABEL_NAMES for p in ("", "volumes/")]
    for name in names:
        node = container.get(name)
        if node is not None and hasattr(node, "shape"):
            return node
    if key:
        raise VolumeFormatError(f"{path} has no dataset {key!r}")
    raise VolumeFormatError(
        f"{path} holds no instances: expected {GT_INSTANCES} (FISBe), {GT_PATH} (activeseg "
        f"volume), consensus (activeseg predict) or a label array; name it with --labels"
    )


def _whole(array: Any, where: str) -> Instances:
    """Return the instances of a stored (Z, Y, X) label image or (N, Z, Y, X) mask stack."""
    shape = tuple(int(n) for n in array.shape)
    if len(shape) not in (3, 4):
        raise VolumeFormatError(f"{where}: labels must be (Z, Y, X) or (N, Z, Y, X), got {shape}")
    source = label_source(array, shape[-3:], where)
    return source.slab(0, source.shape[0])


def evaluate_files(
    pred_spec: str,
    gt_spec: str,
    project: Project | None,
    *,
    fisbe: bool = False,
    partly: bool = False,
    uncertainty: bool = False,
    cluster: ClusterConfig | None = None,
    reliability_plot: Path | None = None,
    labels_key: str | None = None,
    pred_labels_key: str | None = None,
    curves_plot: Path | None = None,
) -> dict[str, Any]:
    """Return the instance metrics of a prediction against ground truth, both named by spec
    (see :func:`load_instances`; labels_key and pred_labels_key name their label datasets).

    With ``uncertainty``, the prediction must be an ``activeseg predict`` output holding
    per-sample foreground and embeddings; uncertainty-quality metrics are added, and the
    reliability diagram of the mean foreground probability is drawn to ``reliability_plot``,
    and PAvPU with its two conditionals over the MI threshold to ``curves_plot``.
    """
    if reliability_plot is not None and not uncertainty:
        raise InputError("a reliability diagram needs --uncertainty (per-sample foreground)")
    if curves_plot is not None and not uncertainty:
        raise InputError("PAvPU curves need --uncertainty (per-sample foreground)")
    pred, pred_path = load_instances(pred_spec, project, pred_labels_key)
    gt, _ = load_instances(gt_spec, project, labels_key)
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction {pred_spec} has shape {pred.shape}, ground truth {gt_spec} has {gt.shape}"
        )
    result: dict[str, Any] = metrics.evaluate_instances(pred, gt, fisbe=fisbe, partly=partly)
    if uncertainty:
        if pred_path is None:
            raise InputError("--uncertainty needs a prediction zarr from `activeseg predict`")
        result |= _uncertainty_report(
            pred_path, pred, gt, cluster or ClusterConfig(), reliability_plot
        )
        if curves_plot is not None:
            result["curves_plot"] = str(_draw_curves(pred_path, pred, gt, curves_plot))
    return result


def _draw_curves(path: Path, pred: Instances, gt: Instances, plot: Path) -> Path:
    """Draw the PAvPU curves of a prediction group's stored voxel MI (or its samples')."""
    group = zarr.open_group(path, mode="r")
    whole = (slice(0, pred.shape[0]), slice(0, pred.shape[1]), slice(0, pred.shape[2]))
    curve = pavpu_curve(pred.labels, gt.labels, _uncertainty_slab(group, whole))
    return plot_pavpu_curves(curve, plot)


def _uncertainty_report(
    path: Path, pred: Instances, gt: Instances, cluster: ClusterConfig, plot: Path | None
) -> dict[str, Any]:
    group = zarr.open_group(path, mode="r")
    if not _samples_fit_in_memory(group):
        report = streamed_uncertainty(group, pred.labels, gt.labels)
        diagram = report.pop("_reliability")
        if plot is not None:
            report["reliability_plot"] = str(plot_reliability(diagram, report["ECE"], plot))
        return report
    if "foreground" not in group or "embedding" not in group:
        raise InputError(
            f"{path} holds no per-sample foreground/embedding: predict it with "
            f"`activeseg predict --samples samples`"
        )
    fg = np.asarray(zarr.open_array(path, path="foreground")[...], dtype=np.float32)
    emb = np.asarray(zarr.open_array(path, path="embedding")[...], dtype=np.float32)
    samples = segment_samples(
        fg,
        emb,
        **cluster.options(),
    )
    risks = instance_uncertainty(pred.labels, samples)
    report = uncertainty_report(pred.labels, gt.labels, fg, risks)
    if plot is not None:
        diagram = metrics.reliability(fg.mean(axis=0), gt.labels > 0)
        report["reliability_plot"] = str(plot_reliability(diagram, report["ECE"], plot))
    return report


def _samples_fit_in_memory(group: zarr.Group) -> bool:
    """Return whether a prediction group holds per-sample arrays small enough (as float32)
    to be evaluated whole; a moments prediction never does."""
    if "foreground" not in group or "embedding" not in group:
        return UNCERTAINTY not in group  # old moments predictions: refused as before
    stored = sum(_size(group, name) for name in ("foreground", "embedding"))
    return stored * 4 <= IN_MEMORY_BYTES


def _size(group: zarr.Group, name: str) -> int:
    """Return the number of entries of an array of a group."""
    node = group[name]
    return int(np.prod(node.shape)) if isinstance(node, zarr.Array) else 0


def plot_reliability(diagram: metrics.Reliability, ece: float, path: Path) -> Path:
    """Draw a reliability diagram: accuracy and voxel count per confidence bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    filled = diagram.counts > 0
    width = float(np.diff(diagram.centers).mean()) if len(diagram.centers) > 1 else 0.5
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(diagram.centers[filled], diagram.accuracy[filled], width=width, edgecolor="black")
    low = float(diagram.centers[0] - width / 2)
    top.plot([low, 1.0], [low, 1.0], "--", color="gray", label="calibrated")
    top.set(ylabel="accuracy", ylim=(0, 1), title=f"foreground reliability (ECE {ece:.3f})")
    top.legend(loc="upper left")
    bottom.bar(diagram.centers, diagram.counts, width=width, color="gray")
    bottom.set(xlabel="confidence", ylabel="voxels", yscale="log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
