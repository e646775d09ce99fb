"""The input pipeline (`tadax.data`): sampling and view placement, host sharding,
determinism and resume, per-clip augmentation consistency, SSv2 flip modes, and the
synthetic dataset."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tadax.data import augment, pipeline, record_format, records, sampling, views
from tadax.data.config import data_config
from tadax.prepare import record_bytes, synthetic, tfrecord_file
from tadax.prepare.encode import jpeg_bytes
from tadax.data.video import load_views


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """A tiny synthetic dataset (generated on first use, as users get it)."""
    c = data_config(cache_dir=str(tmp_path_factory.mktemp("cache")),
                    synthetic=dict(num_train=40, num_val=18, frames=12, size=32, num_shards=4),
                    num_clips=2, num_crops=3)
    pipeline.resolve_data_dir(c)
    return c


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("n", [1, 7, 16, 17, 100, 301])
@pytest.mark.parametrize("t", [8, 16])
def test_segment_sampling(n, t):
    bounds = np.linspace(0, n, t + 1)
    for s in range(5):
        idx = sampling.segment_indices(n, t, seed=tf.constant([s, 1])).numpy()
        assert idx.shape == (t,) and idx.min() >= 0 and idx.max() <= n - 1
        assert np.all(np.diff(idx) >= 0)
        # one frame from each segment (rounding may land on the segment's end frame)
        assert np.all(idx >= np.floor(bounds[:-1]))
        assert np.all(idx <= np.minimum(np.ceil(bounds[1:]), n - 1))
    for clips in (1, 2, 4, 10):
        for k in range(clips):
            idx = sampling.segment_indices(n, t, clip_idx=k, num_clips=clips).numpy()
            lo, hi = bounds[:-1], bounds[1:]
            pos = (lo + hi) / 2 if clips == 1 else lo + (hi - lo) * (k + 1) / clips
            np.testing.assert_array_equal(idx, np.round(np.clip(pos, 0, n - 1)).astype(int))
            np.testing.assert_array_equal(
                idx, sampling.segment_indices(n, t, clip_idx=k, num_clips=clips).numpy())
    if n >= 2 * t:      # segments cover the video: every segment contributes its own frame
        idx = sampling.segment_indices(n, t).numpy()
        assert len(set(idx.tolist())) == t


def test_segment_centres_round_half_to_even_as_the_original():
    # torch.round: 16 frames in 16 segments -> centres 0.5, 1.5, ... -> 0, 2, 2, 4, ...
    idx = sampling.segment_indices(16, 16).numpy()
    np.testing.assert_array_equal(idx[:4], [0, 2, 2, 4])


def test_interval_sampling():
    n, t, rate = 300, 16, 5
    length = t * rate
    for k in range(4):
        idx = sampling.interval_indices(n, 30.0, t, rate, clip_idx=k, num_clips=4).numpy()
        start = (n - length) * k / 4
        np.testing.assert_array_equal(idx, np.floor(np.linspace(start, start + length - 1, t)))
    for s in range(10):
        idx = sampling.interval_indices(n, 30.0, t, rate, seed=tf.constant([s, 0])).numpy()
        assert idx.min() >= 0 and idx.max() <= n - 1 and idx[-1] - idx[0] <= length - 1
        assert np.all(np.diff(idx) >= 5)
    # A 60 fps video sampled for a 30 fps recipe: the stride doubles.
    idx = sampling.interval_indices(n, 60.0, t, rate, target_fps=30.0).numpy()
    assert idx[-1] - idx[0] == pytest.approx(2 * length - 1, abs=1)
    # Shorter than the window: clamped to the video.
    idx = sampling.interval_indices(20, 30.0, t, rate, seed=tf.constant([0, 0])).numpy()
    assert idx.min() == 0 and idx.max() == 19


def _draw_many(sampler, n: int):
    """`sampler(seed)` for the seeds (i, 1), i < n, in one traced call -> (n, T) numpy."""
    seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.ones([n], tf.int64)], 1)
    run = tf.function(lambda s: tf.map_fn(sampler, s, fn_output_signature=tf.int32),
                      autograph=False)
    return run(seeds).numpy()


def test_training_segment_frames_are_independent_uniform_draws():
    """Training segment sampling over 1000 clips of a 160-frame video in 8 segments of 20:
    each segment's offset is uniform over its segment (mean 10, from 0 to 20) and drawn
    independently of the other segments' (correlation within 4 / sqrt(1000)).

    Catches: one random offset shared by all segments, offsets drawn over the whole video
    or over half a segment."""
    n = 1000
    idx = _draw_many(lambda s: sampling.segment_indices(160, 8, seed=s), n)
    offsets = idx - np.arange(8) * 20                      # rounded 20 u, u ~ U(0, 1)
    assert offsets.min() >= 0 and offsets.max() <= 20
    for k in range(8):
        assert offsets[:, k].min() <= 1 and offsets[:, k].max() >= 19
    # Mean 10 (the last segment's 160 is clamped to 159: a bias of 1/(8 40)); sd 20/sqrt(12).
    assert abs(offsets.mean() - 10) < 4 * (20 / np.sqrt(12)) / np.sqrt(offsets.size) + 0.01
    corr = np.corrcoef(offsets.T)[np.triu_indices(8, 1)]
    assert np.abs(corr).max() < 4 / np.sqrt(n), corr


def test_interval_windows_single_view_in_the_middle_training_uniform():
    """Interval sampling by its definition: the single eval view's window starts at
    max_start / 2; a training window's start is uniform over [0, max_start], here 84 frames
    for a window of 16 x 5 = 80: its first frame floor(start) is 0, 1, 2 or 3, each with
    probability 1/4 (counts over 1000 clips within 4 binomial sds).

    Catches: the single view at the start (or the end) of the video, training starts
    drawn over [0, max_start - 1] or over the whole video."""
    n, length = 300, 80
    start = (n - length) / 2
    np.testing.assert_array_equal(sampling.interval_indices(n, 30.0, 16, 5).numpy(),
                                  np.floor(np.linspace(start, start + length - 1, 16)))
    draws = 1000
    idx = _draw_many(lambda s: sampling.interval_indices(84, 30.0, 16, 5, seed=s), draws)
    first = idx[:, 0]
    np.testing.assert_array_equal(idx[:, -1] - first, length - 1)
    counts = np.bincount(first, minlength=5)
    assert counts[4:].sum() == 0, counts
    assert all(abs(c - draws / 4) <= 4 * np.sqrt(draws * 3 / 16) for c in counts[:4]), counts


def test_clip_indices_sample_as_the_config_says():
    """`clip_indices` with the ConvNeXt Kinetics recipe's sampling (16 frames at stride 5 in
    30 fps frames) on a 300-frame 60 fps video: a window of 16 x 5 x 60 / 30 = 160 frames,
    the single view from frame 70 = (300 - 160) / 2, view k of 4 from 140 k / 4, a
    training window 159 frames long; and segment sampling as `segment_indices`.

    Catches: the target rate, the stride or the frame count not passed on (no test read
    interval sampling through the config)."""
    from tadax.data.config import recipe_overrides
    c = data_config(dataset="kinetics400", **recipe_overrides("convnext", "kinetics400"))
    assert (c.sampling, c.num_frames, c.sampling_rate, c.target_fps) == ("interval", 16, 5, 30.0)
    window = lambda start: np.floor(np.linspace(start, start + 159, 16))  # noqa: E731
    np.testing.assert_array_equal(sampling.clip_indices(c, 300, 60.0).numpy(), window(70))
    for k in range(4):
        np.testing.assert_array_equal(
            sampling.clip_indices(c, 300, 60.0, clip_idx=k, num_clips=4).numpy(), window(35 * k))
    idx = sampling.clip_indices(c, 300, 60.0, seed=tf.constant([4, 2])).numpy()
    assert idx.shape == (16,) and idx[-1] - idx[0] == 159
    seg = data_config(dataset="kinetics400", num_frames=8)
    np.testing.assert_array_equal(sampling.clip_indices(seg, 100, 30.0, clip_idx=1, num_clips=2),
                                  sampling.segment_indices(100, 8, clip_idx=1, num_clips=2))


# ------------------------------------------------------------ eval views

def coded_video(t=10, h=40, w=60):
    """Frames whose pixels encode (frame, x, y) in their channels."""
    tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt * 10, xx, yy], -1).astype(np.uint8)


@pytest.mark.parametrize("h,w", [(40, 60), (60, 40)])
def test_view_placement(h, w):
    video = coded_video(h=h, w=w)
    c = data_config(dataset="kinetics400", num_frames=5, test_scale=40, test_crop_size=40,
                    num_clips=2, num_crops=3)
    out = views.eval_views(lambda i: tf.gather(tf.constant(video), i), 10, 30.0, c,
                           multi_view=True).numpy()
    assert out.shape == (6, 5, 40, 40, 3)
    offsets = [0, 10, 20]
    for v in range(6):
        k, crop = divmod(v, 3)
        frames = sampling.segment_indices(10, 5, clip_idx=k, num_clips=2).numpy()
        np.testing.assert_array_equal(out[v, :, 0, 0, 0], frames * 10)
        x0, y0 = (offsets[crop], 0) if h < w else (0, offsets[crop])
        assert (out[v, 0, 0, 0, 1], out[v, 0, 0, 0, 2]) == (x0, y0)
    single = views.eval_views(lambda i: tf.gather(tf.constant(video), i), 10, 30.0, c,
                              multi_view=False).numpy()
    assert single.shape == (1, 5, 40, 40, 3)
    assert (single[0, 0, 0, 0, 1], single[0, 0, 0, 0, 2]) == ((10, 0) if h < w else (0, 10))


def test_square_frames_are_cropped_along_the_height():
    """Square frames (crop below the test scale): the original's three crops go down the
    height (top, centre, bottom) at the horizontal centre.

    Catches: a square frame taken as landscape (its crops along the width)."""
    video = coded_video(h=60, w=60)
    c = data_config(dataset="kinetics400", num_frames=5, test_scale=60, test_crop_size=40,
                    num_clips=1, num_crops=3)
    out = views.eval_views(lambda i: tf.gather(tf.constant(video), i), 10, 30.0, c,
                           multi_view=True).numpy()
    assert [(out[v, 0, 0, 0, 1], out[v, 0, 0, 0, 2]) for v in range(3)] == \
        [(10, 0), (10, 10), (10, 20)]                              # (x, y) of each crop


def test_normalize_is_the_original_formula():
    """(x / 255 - mean) / std per channel, numpy, in the configured dtype.

    Catches: mean and std swapped, the division by 255 after the mean, channels reversed."""
    c = data_config(dataset="kinetics400", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    pixels = np.array([[0, 128, 255], [51, 102, 204]], np.float32)
    want = (pixels / 255 - np.array(c.mean)) / np.array(c.std)
    np.testing.assert_allclose(views.normalize(tf.constant(pixels), c).numpy(), want, rtol=1e-6)
    c.dtype = "bfloat16"
    got = views.normalize(tf.constant(pixels), c)
    assert got.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want, rtol=1e-2)


def test_resize_short_side_truncates_like_the_original():
    """Landscape and portrait: the long side int(long / short x size), truncated."""
    out = views.resize_short_side(tf.zeros([1, 240, 320, 3], tf.uint8), 224)
    assert out.shape == (1, 224, 298, 3)         # int(320 / 240 * 224) = 298 (298.67)
    out = views.resize_short_side(tf.zeros([1, 320, 240, 3], tf.uint8), 224)
    assert out.shape == (1, 298, 224, 3)


def collect_eval(c, pc, batch, multi_view=True):
    hosts = []
    for pi in range(pc):
        hosts.append(list(pipeline.build_eval_iterator(
            c, split="val", global_batch_size=batch, multi_view=multi_view,
            process_index=pi, process_count=pc)))
    return hosts


@pytest.mark.parametrize("pc", [1, 2, 3])
def test_eval_every_view_once_across_hosts(cfg, pc):
    n = pipeline.num_examples(cfg, "val")
    hosts = collect_eval(cfg, pc, 12)
    assert len({len(h) for h in hosts}) == 1, "hosts yield different numbers of batches"
    seen, labels = [], {}
    for batches in hosts:
        for b in batches:
            assert b["video"].shape == (12 // pc, 8, 32, 32, 3)
            m = b["mask"]
            assert np.all(b["video_id"][~m] == -1) and np.all(b["video"][~m] == 0)
            seen += list(zip(b["video_id"][m].tolist(), b["view"][m].tolist()))
            for vid, lab in zip(b["video_id"][m], b["label"][m]):
                assert labels.setdefault(int(vid), int(lab)) == lab
    assert sorted(seen) == [(v, k) for v in range(n) for k in range(6)]
    assert len(hosts[0]) == -(-(-(-n // pc) * 6) // (12 // pc))


def test_eval_single_view_and_determinism(cfg):
    a = collect_eval(cfg, 1, 8, multi_view=False)[0]
    b = collect_eval(cfg, 1, 8, multi_view=False)[0]
    assert sum(int(x["mask"].sum()) for x in a) == pipeline.num_examples(cfg, "val")
    assert all(np.array_equal(x["video"], y["video"]) for x, y in zip(a, b))
    assert all(np.all(x["view"][x["mask"]] == 0) for x in a)


def test_load_views_matches_the_eval_pipeline(cfg):
    data_dir = pipeline.resolve_data_dir(cfg)
    names = [ex["filename"].decode() for ex in tf.data.TFRecordDataset(
        records.shard_files(data_dir, "val")).map(records.parse).as_numpy_iterator()]
    batches = collect_eval(cfg, 1, 6)[0]
    vid = 3
    piped = np.concatenate([b["video"][b["video_id"] == vid] for b in batches])
    direct = load_views(os.path.join(data_dir, "videos", "val", names[vid]), cfg, multi_view=True)
    assert direct.shape == piped.shape == (6, 8, 32, 32, 3)
    assert np.abs(direct - piped).mean() < 0.1        # JPEG storage only (normalised units)


# ------------------------------------------------------------ training

def take(it, k):
    return [next(it) for _ in range(k)]


def test_train_deterministic_and_resumable(cfg):
    def run(start, seed=0):
        return pipeline.build_train_iterator(cfg, global_batch_size=8, seed=seed,
                                             start_step=start, process_index=0, process_count=1)
    full = take(run(0), 8)                       # 40 videos: 5 steps an epoch, crosses one
    for start in (3, 6):
        resumed = take(run(start), 8 - start)
        for a, b in zip(full[start:], resumed):
            np.testing.assert_array_equal(a["video"], b["video"])
            np.testing.assert_array_equal(a["label"], b["label"])
    other = take(run(0, seed=1), 1)[0]
    assert not np.array_equal(other["video"], full[0]["video"])
    assert full[0]["video"].shape == (8, 8, 32, 32, 3) and full[0]["label"].dtype == np.int32
    # every training video once per epoch
    first_epoch = np.concatenate([b["label"] for b in full[:5]])
    assert np.bincount(first_epoch, minlength=8).tolist() == [5] * 8


def _stream_order(c, stream, k, start, count):
    """Hashes of `count` raw records of training stream `stream` of `k`, from record `start`."""
    ds = pipeline._stream_records(stream, c, 0, k, start).take(count)
    return [hash(r.numpy()) for r, _, _ in ds]


@pytest.mark.parametrize("k,buffer", [(1, 1), (4, 4096)])
def test_every_epoch_has_its_own_order(cfg, k, buffer):
    """A training stream's raw records over 4 epochs: each epoch is its records once, the
    epochs come in different orders, and a stream started at record s continues from
    there. k = 1, no shuffle buffer: the 4 shard files' order alone orders the records
    (the same order in all 4 epochs by chance: 24^-3); k = 4: one file per stream, the
    shuffle alone orders them.

    Catches: the file order drawn once for all epochs, the record shuffle seeded the same
    every epoch (every epoch in the same order: the original reshuffles per epoch)."""
    c = data_config(**{**cfg.to_dict(), "shuffle_buffer": buffer * k})
    stream = pipeline._streams(pipeline._shards(c, "train"), k)[0]
    n = stream.epoch_len
    order = _stream_order(c, stream, k, 0, 4 * n)
    epochs = [order[e * n:(e + 1) * n] for e in range(4)]
    assert all(len(set(e)) == n and set(e) == set(epochs[0]) for e in epochs)
    assert len({tuple(e) for e in epochs}) >= 2 if k == 1 else len({tuple(e) for e in epochs}) == 4
    assert _stream_order(c, stream, k, n + 3, 2 * n) == order[n + 3:3 * n + 3]


def test_train_hosts_read_disjoint_data(cfg):
    files = records.shard_files(pipeline.resolve_data_dir(cfg), "train")
    shards = pipeline._shards(cfg, "train")
    assert list(shards) == files
    assert pipeline.num_streams(cfg, 8, len(files), 1) == 4
    streams = pipeline._streams(shards, 4)
    assert sorted(f for st in streams for f in st.files) == files
    assert sum(st.epoch_len for st in streams) == 40
    few = pipeline._streams(shards, 8)                 # more streams than files: record-level
    assert all(st.record_shard for st in few) and sum(st.epoch_len for st in few) == 40
    with pytest.raises(ValueError, match="num_streams=3"):
        pipeline.num_streams(data_config(num_streams=3), 8, 4, 1)


@pytest.mark.parametrize("start", [0, 4])
def test_global_batches_do_not_depend_on_the_host_count(cfg, start):
    def host(pi, pc):
        return take(pipeline.build_train_iterator(cfg, global_batch_size=8, seed=3,
                                                  start_step=start, process_index=pi,
                                                  process_count=pc), 3)
    one = host(0, 1)
    for pc in (2, 4):
        parts = [host(pi, pc) for pi in range(pc)]
        for step in range(3):
            for key in ("video", "label"):
                np.testing.assert_array_equal(
                    np.concatenate([p[step][key] for p in parts]), one[step][key])
    assert parts[1][0]["video"].shape[0] == 2


def test_bfloat16_output(cfg):
    c = data_config(**{**cfg.to_dict(), "dtype": "bfloat16"})
    batch = next(pipeline.build_train_iterator(c, global_batch_size=4, seed=0,
                                               process_index=0, process_count=1))
    assert batch["video"].dtype.name == "bfloat16"


def serialized(frames, label=0):
    return record_bytes.sequence_example([jpeg_bytes(f, 95) for f in frames], label=label, text="x",
                                    filename="v.mp4", start_us=0, end_us=10 ** 6, fps=len(frames))


def test_eval_view_numbers_name_their_clip_and_crop():
    """The eval pipeline's records -> views: view v shows temporal clip v // num_crops at
    spatial crop v % num_crops (2 clips x 3 crops of a landscape video whose pixels code
    their frame, column and row; JPEG keeps the codes within a fraction of their step).

    Catches: views numbered crop-major (clip + num_clips x crop), or all as clip 0."""
    tt, yy, xx = np.meshgrid(np.arange(10), np.arange(40), np.arange(60), indexing="ij")
    record = tf.constant(serialized(list(np.stack([tt * 20, xx * 4, yy * 4], -1)
                                         .astype(np.uint8))))
    c = data_config(dataset="kinetics400", num_frames=5, test_scale=40, test_crop_size=40,
                    num_clips=2, num_crops=3, mean=(0.0,) * 3, std=(1.0,) * 3)
    seen = []
    for k in range(2):
        out = pipeline._eval_clip(record, tf.constant(7, tf.int64), k, c, True)
        for view, clip in zip(out["view"].numpy(), out["video"].numpy() * 255):
            clip_idx, crop = divmod(int(view), 3)
            frames = sampling.segment_indices(10, 5, clip_idx=clip_idx, num_clips=2).numpy()
            np.testing.assert_allclose(clip[:, 20, 20, 0] / 20, frames, atol=0.25)
            np.testing.assert_allclose(clip[:, 20, 20, 1] / 4, 20 + 10 * crop, atol=0.5)
            seen.append(int(view))
    assert sorted(seen) == list(range(6))


def test_augmentation_is_the_same_on_every_frame():
    """Identical input frames must stay identical: crop, flip, RandAugment, grayscale per clip."""
    rng = np.random.default_rng(0)
    frame = np.asarray(tf.image.resize(rng.uniform(0, 255, (6, 8, 3)), (48, 64)), np.uint8)
    record = serialized([frame] * 6)
    c = data_config(dataset="kinetics400", num_frames=4, train_crop_size=32, grayscale_p=0.5)
    outs = []
    for s in range(12):
        ex = pipeline._train_example(record, tf.constant(s, tf.int64), c, 7)
        clip = ex["video"].numpy()
        assert clip.shape == (4, 32, 32, 3)
        for t in range(1, 4):
            np.testing.assert_array_equal(clip[t], clip[0])
        outs.append(clip[0])
    assert len({o.tobytes() for o in outs}) == 12              # and it does augment
    assert any(np.allclose(o[..., 0] * c.std[0] + c.mean[0], o[..., 1] * c.std[1] + c.mean[1],
                           atol=1e-5) for o in outs)          # grayscale happened somewhere


def lr_record(label):
    """A clip whose left half is dark and right half bright."""
    frame = np.zeros((32, 32, 3), np.uint8)
    frame[:, 16:] = 255
    return serialized([frame] * 4, label=label)


def ssv2_run(mode, label):
    c = data_config(dataset="ssv2", num_frames=2, train_crop_size=32, train_scale=(1.0, 1.0),
                    ratio=(1.0, 1.0), randaugment="", grayscale_p=0.0, ssv2_flip_mode=mode)
    out = []
    for s in range(40):
        ex = pipeline._train_example(lr_record(label), tf.constant(s, tf.int64), c, 11)
        v = ex["video"].numpy()
        out.append((bool(v[0, :, 0].mean() > v[0, :, -1].mean()), int(ex["label"])))
    return out


def test_ssv2_label_swaps_exactly_when_mirrored():
    for label, other in ((86, 87), (94, 93), (167, 166)):
        runs = ssv2_run("mirror", label)
        assert {m for m, _ in runs} == {True, False}
        assert all(lab == (other if mirrored else label) for mirrored, lab in runs)
    assert all(lab == 5 for _, lab in ssv2_run("mirror", 5))


def test_ssv2_original_mode_swaps_independently_and_off_never_swaps():
    runs = ssv2_run("original", 86)
    assert any(mirrored != (lab == 87) for mirrored, lab in runs)   # label and mirror disagree
    assert {lab for _, lab in runs} == {86, 87}
    runs = ssv2_run("off", 86)
    assert {m for m, _ in runs} == {True, False} and {lab for _, lab in runs} == {86}


def test_shuffle_frames_permutes_time(cfg):
    base = collect_eval(cfg, 1, 6, multi_view=False)[0][0]
    c = data_config(**{**cfg.to_dict(), "shuffle_frames": True})
    shuffled = collect_eval(c, 1, 6, multi_view=False)[0][0]
    for a, b in zip(base["video"], shuffled["video"]):
        key = lambda clip: sorted(f.tobytes() for f in clip)
        assert key(a) == key(b)
    assert not np.array_equal(base["video"], shuffled["video"])


# ------------------------------------------------------------ synthetic

def test_synthetic_pairs_are_time_reversals():
    for fwd, rev in synthetic.PAIRS:
        a = synthetic.class_clip(np.random.default_rng(5), synthetic.CLASSES[fwd], 12, 32)
        b = synthetic.class_clip(np.random.default_rng(5), synthetic.CLASSES[rev], 12, 32)
        np.testing.assert_array_equal(a[::-1], b)
        assert np.abs(a[0].astype(int) - a[-1]).mean() > 3        # the motion is visible
    assert sorted(i for p in synthetic.PAIRS for i in p) == list(range(8))


def test_synthetic_is_generated_once(cfg):
    d = pipeline.resolve_data_dir(cfg)
    assert pipeline.resolve_data_dir(cfg) == d
    assert pipeline.num_examples(cfg, "train") == 40 and pipeline.num_examples(cfg, "val") == 18
    names = open(os.path.join(d, "classes.txt")).read().split("\n")[:-1]
    assert tuple(names) == synthetic.CLASSES


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="data_dir is empty"):
        pipeline.num_examples(data_config(dataset="kinetics400"), "train")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        pipeline.num_examples(data_config(dataset="kinetics400", data_dir=str(tmp_path)), "val")
    with pytest.raises(KeyError, match="num_frame"):
        data_config(num_frame=8)


def test_reads_dmvr_records_without_our_extra_fields(tmp_path):
    """Records as DMVR's scripts write them: no fps / frame count, no _meta bookkeeping."""
    frame = np.full((36, 48, 3), 90, np.uint8)
    for shard in range(2):
        with tf.io.TFRecordWriter(str(tmp_path / record_format.shard_name("val", shard, 2))) as w:
            for i in range(3):
                ex = tf.train.SequenceExample()
                ctx = ex.context.feature
                ctx[record_format.LABEL_KEY].int64_list.value.append(shard * 3 + i)
                ctx[record_format.START_KEY].int64_list.value.append(0)
                ctx[record_format.END_KEY].int64_list.value.append(2_000_000)       # 2 s, 20 frames
                for _ in range(20):
                    ex.feature_lists.feature_list[record_format.FRAMES_KEY].feature.add() \
                        .bytes_list.value.append(jpeg_bytes(frame, 90))
                w.write(ex.SerializeToString())
    first = next(iter(tf.data.TFRecordDataset(records.shard_files(str(tmp_path), "val"))))
    parsed = records.parse(first)
    assert float(parsed["fps"]) == pytest.approx(10.0) and int(parsed["num_frames"]) == 20
    c = data_config(dataset="kinetics400", data_dir=str(tmp_path), num_frames=4, test_scale=32,
                    test_crop_size=32, num_clips=2, num_crops=1)
    assert pipeline.num_examples(c, "val") == 6
    batches = list(pipeline.build_eval_iterator(c, split="val", global_batch_size=4,
                                                multi_view=True, process_index=0,
                                                process_count=1))
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert sorted(labels.tolist()) == sorted(list(range(6)) * 2)


@pytest.mark.parametrize("sizes,label,text", [
    ([0], 7, "abseiling"), ([5, 127, 128], -1, ""), ([16383, 16384, 3_000_000], 0, "é ski"),
    ([300] * 400, 399, "zumba")])
def test_sequence_example_bytes_are_protobufs_own(sizes, label, text):
    """A record written in wire format without TensorFlow makes the very bytes protobuf's
    deterministic serialisation makes: frame lengths across 1- to 4-byte varints, an
    unlabelled video's -1 (a ten-byte varint), a label 0, empty and non-ASCII text."""
    rng = np.random.default_rng(len(sizes))
    frames = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    context = dict(label=label, text=text, filename="v.mp4", start_us=-5, end_us=10**7,
                   fps=29.97)
    ex = tf.train.SequenceExample()
    ctx = ex.context.feature
    ctx[record_format.LABEL_KEY].int64_list.value.append(label)
    ctx[record_format.TEXT_KEY].bytes_list.value.append(text.encode())
    ctx[record_format.FILENAME_KEY].bytes_list.value.append(b"v.mp4")
    ctx[record_format.START_KEY].int64_list.value.append(-5)
    ctx[record_format.END_KEY].int64_list.value.append(10**7)
    ctx[record_format.FPS_KEY].float_list.value.append(29.97)
    ctx[record_format.NUM_FRAMES_KEY].int64_list.value.append(len(frames))
    frame_list = ex.feature_lists.feature_list[record_format.FRAMES_KEY]
    for f in frames:
        frame_list.feature.add().bytes_list.value.append(f)
    ours = record_bytes.sequence_example(frames, **context)
    assert ours == ex.SerializeToString(deterministic=True)
    assert tf.train.SequenceExample.FromString(ours) == ex


def test_tfrecord_file_is_tensorflows_bytes(tmp_path):
    """Records framed without TensorFlow: the same file as tf.io.TFRecordWriter's, read back
    by TFRecordDataset (lengths across the checksummed header's values, an empty record)."""
    rng = np.random.default_rng(0)
    data = [b"", b"x"] + [rng.integers(0, 256, n, dtype=np.uint8).tobytes()
                          for n in (255, 256, 70_000, 3_000_001)]
    with tfrecord_file.TFRecordFileWriter(str(tmp_path / "ours.tfrecord")) as writer:
        for d in data:
            writer.write(d)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for d in data:
            writer.write(d)
    ours = (tmp_path / "ours.tfrecord").read_bytes()
    assert ours == (tmp_path / "tf.tfrecord").read_bytes()
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord"))]
    assert read == data


def test_each_eval_host_opens_only_its_shard_files(cfg, tmp_path):
    """Two hosts on a copy of the split whose other host's files are garbage: each host's
    batches are the ones the intact split gives (it never opens those files), and its
    files hold exactly its contiguous block of videos."""
    import shutil
    shards = pipeline._shards(cfg, "val")
    starts = np.cumsum([0] + list(shards.values()))
    src = pipeline.resolve_data_dir(cfg)
    for pi in range(2):
        block = range(9 * pi, 9 * pi + 9)                  # 18 videos in 4 files of 5, 5, 4, 4
        holding = [f for f, a, b in zip(shards, starts, starts[1:])
                   if a < block.stop and b > block.start]
        assert 0 < len(holding) < len(shards)
        reads = pipeline.eval_reads(shards, np.arange(starts[-1]), pi, 2)
        assert reads.videos.tolist() == list(block) and reads.files == holding
        copy = tmp_path / f"host{pi}"
        shutil.copytree(src, copy)
        for path in shards:
            if path not in holding:
                (copy / os.path.basename(path)).write_bytes(b"not a TFRecord file")
        broken = data_config(**{**cfg.to_dict(), "data_dir": str(copy)})
        want = collect_eval(cfg, 2, 12)[pi]
        got = list(pipeline.build_eval_iterator(broken, split="val", global_batch_size=12,
                                                multi_view=True, process_index=pi,
                                                process_count=2))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_eval_hosts_beyond_the_videos_yield_padding_only(cfg):
    """2 selected videos on 4 hosts: hosts 0 and 1 get one each, hosts 2 and 3 read nothing
    and yield as many batches, all padding."""
    hosts = [list(pipeline.build_eval_iterator(cfg, split="val", global_batch_size=8,
                                               multi_view=True, process_index=pi,
                                               process_count=4, video_ids=[11, 3]))
             for pi in range(4)]
    assert len({len(h) for h in hosts}) == 1
    seen = [sorted(zip(np.concatenate([b["video_id"][b["mask"]] for b in h]).tolist(),
                       np.concatenate([b["view"][b["mask"]] for b in h]).tolist()))
            for h in hosts]
    assert seen == [[(3, v) for v in range(6)], [(11, v) for v in range(6)], [], []]
    assert pipeline.host_eval_reads(cfg, "val", 3, 4, video_ids=[11, 3]).files == []
