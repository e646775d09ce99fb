"""Video embeddings: the model's `features` method for both families, and the
`python -m tadax.features` command on a tiny prepared split and a folder of videos."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tadax.models import build_model, default_model_config


def tiny_models():
    former = default_model_config("tadaformer_tiny", num_classes=8)
    convnext = default_model_config("tadaconvnextv2_tiny", depths=(1, 1),
                                    dims=(16, 32), rf_head_dim=8, image_size=32,
                                    num_frames=4, num_classes=5)
    return {"tadaformer": former, "tadaconvnextv2": convnext}


def random_variables(model, cfg, seed=0):
    """Random parameters of a model (shapes from `jax.eval_shape`, no init compile) and
    positive BatchNorm variances, so that every branch computes something non-trivial."""
    video = jax.ShapeDtypeStruct((1, cfg.num_frames, cfg.image_size, cfg.image_size, 3),
                                 jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), video)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return (0.5 + rng.uniform(size=s.shape)).astype(np.float32)
        return (0.2 * rng.normal(size=s.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _layer_norm(x, params, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["bias"]


@pytest.mark.parametrize("family", ["tadaformer", "tadaconvnextv2"])
def test_features_method_pooled_and_pre_pool(family):
    cfg = tiny_models()[family]
    model = build_model(cfg)
    variables = random_variables(model, cfg)
    video = np.random.default_rng(1).normal(size=(2, cfg.num_frames, 32, 32, 3)).astype(np.float32)

    def run(v, x):
        pooled, pre = model.apply(v, x, pre_pool=True, method=model.features)
        return (model.apply(v, x), model.apply(v, x, method=model.features), pooled, pre,
                model.apply(v, pooled, False, method=lambda m, f, t: m.head(f, t)))

    logits, pooled, pooled2, pre, head = jax.jit(run)(variables, video)
    np.testing.assert_allclose(head, logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pooled2, pooled, atol=1e-6)
    pre = np.asarray(pre, np.float64)
    backbone = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                      variables["params"]["backbone"])
    if family == "tadaformer":
        grid = cfg.image_size // cfg.patch_size
        assert pre.shape == (2, cfg.num_frames // 2, 1 + grid * grid, cfg.width)
        want = _layer_norm(pre[:, :, 0].mean(1), backbone["ln_post"], 1e-5)
    else:
        assert pre.shape == (2, cfg.num_frames // 2, 4, 4, cfg.dims[-1])
        want = _layer_norm(pre.mean((1, 2, 3)), backbone["norm"], 1e-6)
    np.testing.assert_allclose(pooled, want, atol=1e-5)


# ---------------------------------------------------------------- the command

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The quick-start config on a 7-video synthetic split (2 clips per video), and a
    tiny TAdaFormer with random weights saved as a model directory."""
    from configs import quickstart
    from tadax.checkpoint_io import save_variables
    from tadax.data import pipeline

    root = tmp_path_factory.mktemp("features")
    config = quickstart.get_config()
    config.data.cache_dir = str(root / "cache")
    config.data.synthetic.update(dict(num_train=8, num_val=7, frames=12, num_shards=2))
    config.eval.batch_size = 4
    config.features.videos_per_shard = 3
    pipeline.resolve_data_dir(config.data)
    model = build_model(config.model)
    variables = random_variables(model, config.model)
    save_variables(str(root / "ckpt"), variables, config.model)
    features = jax.jit(lambda v, x: model.apply(v, x, pre_pool=True, method=model.features))
    return dict(root=root, config=config, ckpt=str(root / "ckpt"), variables=variables,
                features=features)


def load_shards(folder):
    shards = sorted(folder.glob("features-*.npz"))
    return shards, [dict(np.load(s)) for s in shards]


def reference(setup):
    """Per video of the split, from the eval iterator and direct model calls: the views'
    pooled and pre-pool features `(V, D)`, `(V, T', N, D)`, label and filename (computed once)."""
    from tadax.data import pipeline

    if "reference" in setup:
        return setup["reference"]
    out = setup["reference"] = {}
    for b in pipeline.build_eval_iterator(setup["config"].data, split="val", global_batch_size=4,
                                          multi_view=True, process_index=0, process_count=1):
        pooled, pre = setup["features"](setup["variables"], b["video"])
        for r in np.flatnonzero(b["mask"]):
            vid = int(b["video_id"][r])
            entry = out.setdefault(vid, {"label": int(b["label"][r]),
                                         "filename": b["filename"][r].decode(), "views": {}})
            entry["views"][int(b["view"][r])] = (np.asarray(pooled[r]), np.asarray(pre[r]))
    return out


def test_eval_iterator_subset_of_videos(setup):
    """`video_ids`: only those videos, cut in split order into one contiguous block per host,
    every view once, equal batch counts, and the record's file name with every view."""
    from tadax.data import pipeline

    ref = reference(setup)
    hosts = [list(pipeline.build_eval_iterator(
        setup["config"].data, split="val", global_batch_size=4, multi_view=True,
        process_index=p, process_count=2, video_ids=[5, 1, 3])) for p in range(2)]
    assert len(hosts[0]) == len(hosts[1])
    for p, want in enumerate(([1, 3], [5])):
        got = [(int(b["video_id"][r]), int(b["view"][r]), b["filename"][r].decode())
               for b in hosts[p] for r in np.flatnonzero(b["mask"])]
        assert got == [(i, v, ref[i]["filename"]) for i in want for v in (0, 1)]
    with pytest.raises(ValueError, match="outside"):
        pipeline.build_eval_iterator(setup["config"].data, split="val", global_batch_size=4,
                                     multi_view=True, video_ids=[7])


def test_split_features_resume_and_two_hosts(setup, tmp_path):
    from tadax.features import extract as features

    config, out = setup["config"], tmp_path / "one"
    summary = features.extract(config, checkpoint=setup["ckpt"], output=str(out), split="val")
    assert summary["written"] == [0, 1, 2] and summary["num_videos"] == 7
    paths, shards = load_shards(out)
    assert [p.name for p in paths] == [f"features-{j:05d}-of-00003.npz" for j in range(3)]
    ref = reference(setup)
    ids = np.concatenate([s["video_id"] for s in shards])
    np.testing.assert_array_equal(ids, np.arange(7))
    feats = np.concatenate([s["features"] for s in shards])
    assert feats.shape == (7, config.model.width) and "pre_pool" not in shards[0]
    for i in range(7):
        views = ref[i]["views"]
        assert sorted(views) == [0, 1]
        np.testing.assert_allclose(feats[i], np.mean([views[v][0] for v in views], 0),
                                   atol=1e-5)
    assert np.concatenate([s["label"] for s in shards]).tolist() == [ref[i]["label"] for i in range(7)]
    names = np.concatenate([s["filename"] for s in shards]).tolist()
    assert names == [ref[i]["filename"] for i in range(7)] and names[0].endswith(".mp4")

    # Resume: only the deleted shard is computed and written again.
    stamps = {p.name: p.stat().st_mtime_ns for p in paths}
    paths[1].unlink()
    summary = features.extract(config, checkpoint=setup["ckpt"], output=str(out), split="val")
    assert summary["shards"] == [1] and summary["written"] == [1]
    paths2, shards2 = load_shards(out)
    assert {p.name: p.stat().st_mtime_ns for p in paths2 if p.name != paths[1].name} == \
        {k: v for k, v in stamps.items() if k != paths[1].name}
    for a, b in zip(shards, shards2):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])

    # Two hosts: host p writes the shards j with j mod 2 = p; together the same shards.
    two = tmp_path / "two"
    s0 = features.extract(config, checkpoint=setup["ckpt"], output=str(two), split="val",
                          process_index=0, process_count=2)
    assert s0["written"] == [0, 2] and len(list(two.glob("features-*.npz"))) == 2
    s1 = features.extract(config, checkpoint=setup["ckpt"], output=str(two), split="val",
                          process_index=1, process_count=2)
    assert s1["written"] == [1]
    _, shards_two = load_shards(two)
    for a, b in zip(shards, shards_two):
        np.testing.assert_array_equal(a["video_id"], b["video_id"])
        np.testing.assert_allclose(a["features"], b["features"], atol=1e-6)

    # Other settings into the same folder are refused, naming the difference.
    config.features.aggregate = "all"
    try:
        with pytest.raises(ValueError, match="aggregate: 'mean' there, 'all' now"):
            features.extract(config, checkpoint=setup["ckpt"], output=str(out), split="val")
    finally:
        config.features.aggregate = "mean"


def test_all_views_and_pre_pool_features(setup, tmp_path):
    from tadax.features import extract as features

    config = setup["config"]
    config.features.update(dict(aggregate="all", pre_pool=True, videos_per_shard=10))
    try:
        features.extract(config, checkpoint=setup["ckpt"], output=str(tmp_path), split="val")
    finally:
        config.features.update(dict(aggregate="mean", pre_pool=False, videos_per_shard=3))
    _, (shard,) = load_shards(tmp_path)
    width, frames = config.model.width, config.model.num_frames // 2
    assert shard["features"].shape == (7, 2, width)
    assert shard["pre_pool"].shape == (7, 2, frames, 1 + (32 // 8) ** 2, width)
    ref = reference(setup)
    for i in range(7):
        for v in range(2):
            np.testing.assert_allclose(shard["features"][i, v], ref[i]["views"][v][0], atol=1e-5)
            np.testing.assert_allclose(shard["pre_pool"][i, v], ref[i]["views"][v][1], atol=1e-5)


def test_folder_of_videos_from_the_command_line(setup, tmp_path):
    """`python -m tadax.features --videos DIR`: every decodable file (any depth, sorted),
    the unreadable one listed as skipped, features = direct model calls on its views."""
    import sys

    import command_server
    from conftest import REPO_ROOT
    from tadax.features import extract as features
    from tadax.prepare import synthetic
    from tadax.data.video import load_views

    folder = tmp_path / "videos"
    (folder / "b").mkdir(parents=True)
    rng = np.random.default_rng(0)
    synthetic.write_mp4(str(folder / "b" / "one.mp4"), synthetic.class_clip(rng, "growing", 12, 32), 8)
    synthetic.write_mp4(str(folder / "a.mp4"), rng.integers(0, 255, (10, 40, 48, 3), np.uint8), 8)
    (folder / "b" / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("not a video either")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tadax.features", "--checkpoint", setup["ckpt"],
           "--config=configs/quickstart.py", "--videos", str(folder), "--output", str(out),
           "--config.eval.batch_size=4",
           "--config.features.videos_per_shard=2"]
    run = command_server.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "b/broken.mp4" in run.stderr and "wrote 2 shards (1 videos unreadable" in run.stdout
    _, shards = load_shards(out)
    assert [s["filename"].tolist() for s in shards] == [["a.mp4"], ["b/one.mp4"]]
    assert [s["video_id"].tolist() for s in shards] == [[0], [2]]
    # sorted: a.mp4 (0), b/broken.mp4 (1), b/one.mp4 (2); shards of 2 videos.
    assert shards[0]["skipped"].tolist() == ["b/broken.mp4"] and shards[1]["skipped"].tolist() == []
    data_cfg = features.clip_data_config(setup["config"].data, setup["config"].model)
    for shard, name in zip(shards, ["a.mp4", "b/one.mp4"]):
        views = load_views(str(folder / name), data_cfg)
        pooled, _ = setup["features"](setup["variables"], views)
        np.testing.assert_allclose(shard["features"][0], np.asarray(pooled).mean(0), atol=1e-5)
    (tmp_path / "empty").mkdir()
    for name, message in (("none", "not a folder"), ("empty", "no video files")):
        with pytest.raises(FileNotFoundError, match=message):
            features.extract(setup["config"], checkpoint=setup["ckpt"],
                             output=str(tmp_path / "x"), videos=str(tmp_path / name))
