"""Multi-view evaluation: run the views, sum their softmax scores per video, report.

The original's protocol (`runs/test.py`, `TestMeter`): every video is seen
as `clips x crops` views, the softmax scores of its views are summed and the
sum's top-k decides. Batches are padded to a fixed size and carry a `mask`,
so the batch layout does not depend on the device count.
"""

import json

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from tadax.models import build_model
from tadax.paths import user_path
from tadax.train import plots
from tadax.train.checkpointing import load_weights
from tadax.train.sharding import global_batch, tree_shardings
from tadax.train.state import abstract_variables, select_pretrained

CONFUSION_MAX_CLASSES = 200


def load_model(checkpoint: str, config: ml_collections.ConfigDict, mesh: Mesh,
               use_ema: bool = False) -> Tuple[nn.Module, Dict[str, Any], ml_collections.ConfigDict]:
    """(model, variables sharded by `config.sharding`, model config) of a checkpoint.

    checkpoint: a converted directory (its stored model config is used) or a
    training run (`config.model` is used). Weights that do not fit the model
    are refused (`InitError`) before anything runs.
    """
    loaded, stored_cfg = load_weights(checkpoint, use_ema=use_ema)
    model_cfg = stored_cfg if stored_cfg is not None else config.model
    model = build_model(model_cfg)
    abstract = abstract_variables(model, model_cfg)
    variables = select_pretrained(loaded, abstract, fresh=r"^$")
    shardings = tree_shardings(mesh, abstract, config.sharding.rules,
                               config.sharding.fsdp_min_size)
    return model, jax.device_put(variables, shardings), model_cfg


def _all_hosts(local: np.ndarray) -> np.ndarray:
    """Concatenates every host's share of a batch field in process order."""
    if jax.process_count() == 1:
        return np.asarray(local)
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=True))


def _all_hosts_bytes(local: np.ndarray) -> np.ndarray:
    """Concatenates every host's `(B,)` byte strings in process order -> `(P B,)` object array.

    Strings travel as zero-padded uint8 rows as wide as the longest string of any host,
    beside their lengths (`process_allgather` moves arrays of one shape and dtype).
    """
    strings = [bytes(x) for x in np.asarray(local, dtype=object)]
    if jax.process_count() == 1:
        return np.array(strings, dtype=object)
    lengths = np.array([len(x) for x in strings], np.int64)
    all_lengths = _all_hosts(lengths)
    rows = np.zeros((len(strings), max(1, int(all_lengths.max()))), np.uint8)
    for row, x in zip(rows, strings):
        row[:len(x)] = np.frombuffer(x, np.uint8)
    return np.array([row[:n].tobytes() for row, n in zip(_all_hosts(rows), all_lengths)],
                    dtype=object)


def run_views(eval_step: Callable, variables: Any, batches: Iterable[Mapping[str, np.ndarray]],
              mesh: Mesh, progress: Optional[Callable[[int], None]] = None) -> Dict[str, np.ndarray]:
    """Scores every view of an eval iterator -> `{'probs': (N, C), 'label', 'video_id', 'view',
    'filename': (N,)}` (filename: bytes objects), every host's views on every host.

    batches: this host's padded batches with `video`, `label`, `video_id`,
    `view` (absent for single-view data: 0), `filename` (absent: b'') and `mask`;
    padding is dropped.
    progress: called with the batch count after each batch.
    """
    out = {"probs": [], "label": [], "video_id": [], "view": [], "filename": []}
    for i, batch in enumerate(batches):
        probs = np.asarray(eval_step(variables, global_batch({"video": batch["video"]},
                                                             mesh)["video"]))
        mask = _all_hosts(batch["mask"]).astype(bool)
        out["probs"].append(probs[mask])
        for key in ("label", "video_id"):
            out[key].append(_all_hosts(batch[key])[mask])
        view = batch.get("view", np.zeros_like(batch["label"]))
        out["view"].append(_all_hosts(view)[mask])
        names = batch.get("filename", np.full(len(batch["label"]), b"", dtype=object))
        out["filename"].append(_all_hosts_bytes(names)[mask])
        if progress is not None:
            progress(i + 1)
    if not out["probs"]:
        raise ValueError("the evaluation split is empty")
    return {k: np.concatenate(v) for k, v in out.items()}


def aggregate_views(probs: np.ndarray, labels: np.ndarray, video_ids: np.ndarray
                    ) -> Dict[str, np.ndarray]:
    """Sums the `(N, C)` view scores per video -> `{'video_id': (V,), 'scores': (V, C),
    'label': (V,), 'num_views': (V,)}`, videos in increasing id order.

    Raises ValueError if the views of one video disagree on its label.
    """
    ids, inverse = np.unique(video_ids, return_inverse=True)
    scores = np.zeros((len(ids), probs.shape[1]), np.float64)
    np.add.at(scores, inverse, probs.astype(np.float64))
    counts = np.bincount(inverse, minlength=len(ids))
    video_labels = np.full(len(ids), -1, np.int64)
    video_labels[inverse] = labels
    if np.any(video_labels[inverse] != labels):
        bad = ids[np.unique(inverse[video_labels[inverse] != labels])]
        raise ValueError(f"views of videos {bad[:10].tolist()} disagree on the label")
    return {"video_id": ids, "scores": scores, "label": video_labels, "num_views": counts}


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """`(N,)` bool: the label is among the k highest of each `(N, C)` row (ties: lower index first)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.any(top == labels[:, None], axis=1)


def confusion(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """`(C, C)` counts, rows the true class, columns the predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def metrics(views: Mapping[str, np.ndarray], videos: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """Video- and view-level top-1/top-5 (percent), per-class and mean per-class video accuracy
    over the labelled videos; `num_unlabelled` counts videos with label -1 (an unlabelled
    split, e.g. a test list), which no metric scores. With no labelled video at all the
    accuracy keys are absent: only the counts are returned."""
    num_classes = views["probs"].shape[1]
    k5 = min(5, num_classes)
    out = {
        "num_videos": int(len(videos["video_id"])),
        "num_views": int(len(views["label"])),
        "views_per_video": [int(videos["num_views"].min()), int(videos["num_views"].max())],
        "num_unlabelled": int(np.sum(videos["label"] < 0)),
    }
    if out["num_unlabelled"] == out["num_videos"]:
        return out
    lv, lw = videos["label"] >= 0, views["label"] >= 0
    scores, labels = videos["scores"][lv], videos["label"][lv]
    v_correct = topk_correct(scores, labels, 1)
    per_class = []
    for c in range(num_classes):
        sel = labels == c
        per_class.append(float(v_correct[sel].mean() * 100) if sel.any() else None)
    present = [a for a in per_class if a is not None]
    return {
        "top1": float(v_correct.mean() * 100),
        "top5": float(topk_correct(scores, labels, k5).mean() * 100),
        "view_top1": float(topk_correct(views["probs"][lw], views["label"][lw], 1).mean() * 100),
        "view_top5": float(topk_correct(views["probs"][lw], views["label"][lw], k5).mean() * 100),
        "mean_class_accuracy": float(np.mean(present)),
        **out,
        "per_class_accuracy": per_class,
    }


def _video_filenames(views: Mapping[str, np.ndarray], video_ids: np.ndarray) -> list:
    """The file name (str, or None when unknown) of each of `video_ids`, from its views."""
    if "filename" not in views:
        return [None] * len(video_ids)
    by_id = {int(v): bytes(f) for v, f in zip(views["video_id"], views["filename"])}
    return [by_id[int(v)].decode("utf-8", "replace") or None for v in video_ids]


def write_report(outdir: str, views: Mapping[str, np.ndarray], videos: Mapping[str, np.ndarray],
                 result: Mapping[str, Any], class_names: Optional[Sequence[str]] = None) -> None:
    """Writes `predictions.jsonl` (one video a line: label, top-5 classes and summed
    scores, view count, the record's file name (null if it has none, or `views` has no
    `filename`); label -1 and label_name null for an unlabelled video),
    `metrics.json`, and `confusion.png` (labelled videos, up to 200 classes)."""
    outdir = user_path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    num_classes = videos["scores"].shape[1]
    top = np.argsort(-videos["scores"], axis=1, kind="stable")[:, :min(5, num_classes)]
    filenames = _video_filenames(views, videos["video_id"])
    with (outdir / "predictions.jsonl").open("w") as f:
        for i, vid in enumerate(videos["video_id"]):
            row = {"video_id": int(vid), "label": int(videos["label"][i]),
                   "top5": top[i].tolist(),
                   "top5_scores": [round(float(videos["scores"][i, c]), 6) for c in top[i]],
                   "num_views": int(videos["num_views"][i]), "filename": filenames[i]}
            if class_names is not None:
                row["label_name"] = class_names[row["label"]] if row["label"] >= 0 else None
                row["top5_names"] = [class_names[c] for c in top[i]]
            f.write(json.dumps(row) + "\n")
    (outdir / "metrics.json").write_text(json.dumps(dict(result), indent=1))
    labelled = videos["label"] >= 0
    if num_classes <= CONFUSION_MAX_CLASSES and labelled.any():
        matrix = confusion(top[labelled, 0], videos["label"][labelled], num_classes)
        plots.confusion_matrix(matrix, outdir / "confusion.png", class_names,
                               title=f"top-1 {result['top1']:.2f}% over {int(labelled.sum())} "
                                     "videos")
