"""The evaluation protocol (`tadax/train/evaluation.py`, `eval.py`): multi-view aggregation
and metrics on hand-made scores, the written report, a converted fixture checkpoint end to
end, unlabelled videos, and file names gathered from every host."""

import json

import jax
import numpy as np
import pytest

from tadax.train import evaluation


def hand_made():
    # 3 videos x 2 views, 4 classes. Video 0 (label 1): view 0 favours 2, view 1 strongly 1
    # -> sum favours 1. Video 1 (label 3): both views favour 0 -> wrong, 3 second.
    # Video 2 (label 2): views favour 2.
    probs = np.array([
        [0.1, 0.3, 0.5, 0.1], [0.0, 0.9, 0.1, 0.0],      # video 0
        [0.6, 0.0, 0.1, 0.3], [0.5, 0.1, 0.0, 0.4],      # video 1
        [0.2, 0.1, 0.7, 0.0], [0.1, 0.1, 0.8, 0.0],      # video 2
    ])
    labels = np.array([1, 1, 3, 3, 2, 2])
    ids = np.array([10, 10, 11, 11, 12, 12])
    order = np.array([3, 0, 5, 1, 4, 2])      # views arrive in any order
    return probs[order], labels[order], ids[order]


def test_views_are_summed_per_video():
    probs, labels, ids = hand_made()
    videos = evaluation.aggregate_views(probs, labels, ids)
    np.testing.assert_array_equal(videos["video_id"], [10, 11, 12])
    np.testing.assert_allclose(videos["scores"][0], [0.1, 1.2, 0.6, 0.1])
    np.testing.assert_allclose(videos["scores"][1], [1.1, 0.1, 0.1, 0.7])
    np.testing.assert_array_equal(videos["label"], [1, 3, 2])
    np.testing.assert_array_equal(videos["num_views"], [2, 2, 2])


def test_video_and_view_level_metrics():
    probs, labels, ids = hand_made()
    views = {"probs": probs, "label": labels, "video_id": ids, "view": np.zeros_like(ids)}
    videos = evaluation.aggregate_views(probs, labels, ids)
    result = evaluation.metrics(views, videos)
    assert result["top1"] == pytest.approx(200 / 3)       # videos 10 and 12
    assert result["view_top1"] == pytest.approx(50.0)     # views: 10/1, 12/0, 12/1
    # top-2 would catch video 11; top-5 with 4 classes catches everything.
    assert evaluation.topk_correct(videos["scores"], videos["label"], 2).tolist() == [True, True, True]
    assert result["top5"] == 100.0
    assert result["per_class_accuracy"] == [None, 100.0, 100.0, 0.0]
    assert result["mean_class_accuracy"] == pytest.approx(200 / 3)
    assert result["num_videos"] == 3 and result["num_views"] == 6


def test_metrics_count_class_zero_and_the_fifth_place():
    """Six classes, one view per video: video 0 (class 0) right; video 1 (class 2) has its
    label fifth, inside the top-5 only; video 2 (class 5) has it sixth. Hand-computed:
    top-1 1/3, top-5 2/3, per class [100, -, 0, -, -, 0].

    Catches: class 0 taken for unlabelled (label > 0), top-5 cut at four."""
    probs = np.array([[0.5, 0.1, 0.1, 0.1, 0.1, 0.1],
                      [0.3, 0.25, 0.05, 0.2, 0.15, 0.05],
                      [0.3, 0.25, 0.2, 0.15, 0.09, 0.01]])
    labels, ids = np.array([0, 2, 5]), np.array([0, 1, 2])
    views = {"probs": probs, "label": labels, "video_id": ids, "view": np.zeros(3, int)}
    result = evaluation.metrics(views, evaluation.aggregate_views(probs, labels, ids))
    assert result["num_unlabelled"] == 0
    assert result["top1"] == result["view_top1"] == pytest.approx(100 / 3)
    assert result["top5"] == result["view_top5"] == pytest.approx(200 / 3)
    assert result["per_class_accuracy"] == [100.0, None, 0.0, None, None, 0.0]
    assert result["mean_class_accuracy"] == pytest.approx(100 / 3)


def test_run_views_drops_the_padding_wherever_it_sits():
    """A batch whose padding is between real views (mask 1, 0, 1, 0): only rows 0 and 2
    come back, with their own scores, labels, ids and view numbers.

    Catches: padding dropped by count (the first mask.sum() rows) instead of by mask."""
    import jax.numpy as jnp
    import ml_collections

    from tadax.train.sharding import make_mesh
    mesh = make_mesh(ml_collections.ConfigDict(dict(fsdp=1)))
    table = np.array([[0.7, 0.3], [0.5, 0.5], [0.1, 0.9], [0.5, 0.5]], np.float32)

    def eval_step(variables, video):         # each row's score is chosen by its video
        return jnp.asarray(table)[video[:, 0, 0, 0, 0].astype(jnp.int32)]

    batch = {"video": np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1, 1),
             "label": np.array([0, 0, 1, 0], np.int32), "video_id": np.array([5, -1, 6, -1]),
             "view": np.array([1, -1, 0, -1], np.int32), "mask": np.array([1, 0, 1, 0], bool)}
    views = evaluation.run_views(eval_step, None, [batch], mesh)
    np.testing.assert_allclose(views["probs"], table[[0, 2]])
    assert views["label"].tolist() == [0, 1] and views["video_id"].tolist() == [5, 6]
    assert views["view"].tolist() == [1, 0]


def test_inconsistent_labels_are_refused():
    probs, labels, ids = hand_made()
    labels = labels.copy()
    labels[0] = 0
    with pytest.raises(ValueError, match="disagree"):
        evaluation.aggregate_views(probs, labels, ids)


def test_confusion_counts_true_rows_predicted_columns():
    matrix = evaluation.confusion(np.array([1, 0, 2, 2]), np.array([1, 3, 2, 0]), 4)
    assert matrix[1, 1] == 1 and matrix[3, 0] == 1 and matrix[2, 2] == 1 and matrix[0, 2] == 1
    assert matrix.sum() == 4


def test_report_files(tmp_path):
    probs, labels, ids = hand_made()
    views = {"probs": probs, "label": labels, "video_id": ids, "view": np.zeros_like(ids)}
    videos = evaluation.aggregate_views(probs, labels, ids)
    result = evaluation.metrics(views, videos)
    evaluation.write_report(str(tmp_path), views, videos, result, ["a", "b", "c", "d"])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["video_id"] for r in rows] == [10, 11, 12]
    assert rows[1]["top5"][:2] == [0, 3] and rows[1]["label_name"] == "d"
    assert rows[0]["top5_scores"][0] == pytest.approx(1.2)
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == pytest.approx(200 / 3)
    assert (tmp_path / "confusion.png").stat().st_size > 5_000


def test_converted_fixture_checkpoint_end_to_end(tmp_path):
    """A zoo-format fixture converted with the importer, loaded as eval.py loads it,
    scored through the jitted eval step and aggregated over two views per video:
    the scores are the original's probabilities."""
    import ml_collections

    from conftest import fixtures_dir, require
    from tadax import convert
    from tadax.train.sharding import make_mesh
    from tadax.train.steps import make_eval_step

    pyth = require(fixtures_dir() / "tadaformer_tiny_k400.pyth", "fixture checkpoint")
    ref = np.load(fixtures_dir() / "tadaformer_tiny_k400.npz")
    assert convert.main(["zoo", "--input", str(pyth), "--output", str(tmp_path / "ckpt")]) == 0
    config = ml_collections.ConfigDict(dict(
        mesh=dict(fsdp=1), sharding=dict(rules=[(".*", "fsdp")], fsdp_min_size=1)))
    mesh = make_mesh(config.mesh)
    model, variables, model_cfg = evaluation.load_model(str(tmp_path / "ckpt"), config, mesh)
    step = make_eval_step(model, mesh, jax.tree_util.tree_map(lambda a: a.sharding, variables))
    video = np.transpose(ref["video_ncthw"], (0, 2, 3, 4, 1))         # (2, T, H, W, 3)
    labels = ref["labels"].astype(np.int32)
    # Two views of each of the two clips, padded to a batch of 8 with a mask.
    order = np.array([0, 1, 1, 0])
    pad = 4
    batch = {"video": np.concatenate([video[order], np.zeros((pad,) + video.shape[1:], np.float32)]),
             "label": np.concatenate([labels[order], np.zeros(pad, np.int32)]),
             "video_id": np.concatenate([order, np.zeros(pad, np.int64)]),
             "view": np.array([0, 0, 1, 1] + [0] * pad),
             "mask": np.array([1] * 4 + [0] * pad, bool)}
    views = evaluation.run_views(step, variables, [batch], mesh)
    assert len(views["label"]) == 4
    np.testing.assert_allclose(views["probs"], ref["probs_eval"][order], atol=1e-4)
    videos = evaluation.aggregate_views(views["probs"], views["label"], views["video_id"])
    np.testing.assert_allclose(videos["scores"], 2 * ref["probs_eval"], atol=2e-4)
    result = evaluation.metrics(views, videos)
    want = (ref["probs_eval"].argmax(1) == labels).mean() * 100
    assert result["top1"] == pytest.approx(want) and result["views_per_video"] == [2, 2]
    evaluation.write_report(str(tmp_path / "report"), views, videos, result)
    assert (tmp_path / "report" / "confusion.png").exists()


def test_unlabelled_videos_get_predictions_and_no_metrics(tmp_path):
    """Label -1 (an unlabelled split such as SSv2's test list): predictions are written
    without a label name, no metric scores those videos, none at all when all are unlabelled."""
    probs, labels, ids = hand_made()
    labels = np.where(ids == 11, -1, labels)           # video 11 (the wrong one) unlabelled
    views = {"probs": probs, "label": labels, "video_id": ids, "view": np.zeros_like(ids)}
    videos = evaluation.aggregate_views(probs, labels, ids)
    result = evaluation.metrics(views, videos)
    assert result["top1"] == 100.0 and result["view_top1"] == pytest.approx(75.0)
    assert result["num_unlabelled"] == 1 and result["per_class_accuracy"][3] is None
    evaluation.write_report(str(tmp_path), views, videos, result, ["a", "b", "c", "d"])
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert rows[1]["label"] == -1 and rows[1]["label_name"] is None
    assert rows[1]["top5_names"][:2] == ["a", "d"]

    views["label"] = np.full_like(labels, -1)
    videos = evaluation.aggregate_views(probs, views["label"], ids)
    result = evaluation.metrics(views, videos)
    assert "top1" not in result and result["num_unlabelled"] == result["num_videos"] == 3
    evaluation.write_report(str(tmp_path / "all"), views, videos, result, ["a", "b", "c", "d"])
    rows = [json.loads(line) for line in (tmp_path / "all" / "predictions.jsonl").read_text()
            .splitlines()]
    assert [r["label_name"] for r in rows] == [None] * 3
    assert not (tmp_path / "all" / "confusion.png").exists()


def test_file_names_are_gathered_from_every_host(monkeypatch):
    """Two hosts (threads behind a simulated `process_allgather`) with names of different
    lengths, empty and non-ASCII: every host gets all names, in process order."""
    import threading

    names = [[b"a.mp4", b"", "\u00e9t\u00e9.webm".encode()],
             [b"kinetics_clip_000001_000011.mp4", b"x", b"b.mp4"]]
    barrier, slots, rank = threading.Barrier(2), {}, threading.local()

    def allgather(x, tiled):
        assert tiled
        rank.calls = getattr(rank, "calls", 0) + 1
        slots[(rank.calls, rank.index)] = np.asarray(x)
        barrier.wait()
        out = np.concatenate([slots[(rank.calls, i)] for i in range(2)])
        barrier.wait()
        return out

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(evaluation.multihost_utils, "process_allgather", allgather)
    results = [None, None]

    def host(i):
        rank.index = i
        results[i] = evaluation._all_hosts_bytes(np.array(names[i], dtype=object))

    threads = [threading.Thread(target=host, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for r in results:
        assert r.tolist() == names[0] + names[1]


def test_predictions_name_each_file_once_over_two_hosts(tmp_path):
    """An eval split of 10 prepared videos read as two hosts: predictions.jsonl names every
    file exactly once, beside the label its record holds (the synthetic files are named by
    their index, label = index mod 8) and the same scores one host gives."""
    import ml_collections

    from tadax.data import pipeline
    from tadax.data.config import data_config
    from tadax.train.sharding import make_mesh

    cfg = data_config(cache_dir=str(tmp_path / "cache"), num_clips=2, num_crops=1,
                      synthetic=dict(num_train=2, num_val=10, frames=8, size=32, num_shards=3))
    mesh = make_mesh(ml_collections.ConfigDict(dict(fsdp=1)))
    weights = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32) * 30
    step = jax.jit(lambda w, video: jax.nn.softmax(video.mean(axis=(1, 2, 3)) @ w))

    def report(process_count, out):
        parts = [evaluation.run_views(step, weights, pipeline.build_eval_iterator(
            cfg, split="val", global_batch_size=4 * process_count, multi_view=True,
            process_index=pi, process_count=process_count), mesh)
            for pi in range(process_count)]
        views = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        videos = evaluation.aggregate_views(views["probs"], views["label"], views["video_id"])
        evaluation.write_report(str(out), views, videos, evaluation.metrics(views, videos))
        return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]

    rows = report(2, tmp_path / "two")
    files = [r["filename"] for r in rows]
    assert sorted(files) == [f"val{i:06d}_000000_000001.mp4" for i in range(10)]
    for r in rows:
        assert r["label"] == int(r["filename"][3:9]) % 8 and r["num_views"] == 2
    assert rows == report(1, tmp_path / "one")


def test_reports_compare_exactly_except_scores_within_rounding(tmp_path):
    """The comparison the multi-host tests use (`tests/eval_reports.py`): scores off in
    the 6th decimal (another batch layout on an AVX2 CPU) pass; a changed label, a score
    off by 1e-4, classes trading places with distinct scores, or another accuracy fail."""
    from eval_reports import assert_same_report

    probs, labels, ids = hand_made()
    views = {"probs": probs, "label": labels, "video_id": ids}
    videos = evaluation.aggregate_views(probs, labels, ids)
    result = evaluation.metrics(views, videos)

    def report(name, scores=None, label_of_first=None, top1=None):
        v = dict(videos, scores=videos["scores"] if scores is None else scores)
        if label_of_first is not None:
            v["label"] = np.array([label_of_first, *videos["label"][1:]])
        evaluation.write_report(str(tmp_path / name), views, v,
                                dict(result, top1=result["top1"] if top1 is None else top1))
        return tmp_path / name

    base = report("base")
    assert_same_report(base, report("rounding", videos["scores"] + 1e-6))
    broken = [report("label", label_of_first=0), report("score", videos["scores"] + np.eye(
        *videos["scores"].shape) * 1e-4), report("accuracy", top1=result["top1"] - 0.5)]
    swapped = videos["scores"].copy()
    swapped[1, [0, 3]] = swapped[1, [3, 0]]             # video 11: classes 0 and 3 trade places
    broken.append(report("swap", swapped))
    for folder in broken:
        with pytest.raises(AssertionError):
            assert_same_report(base, folder)
