"""Preparation on bad input as users give it (the command in this process, and the
checkout's `data/prepare.py` in fresh processes): malformed annotation values in every
layout are reported skips, bad command lines end in one line without a traceback, other
containers (.mpg, .ts) decode, unlabelled test lists are written with label -1 and read
back by the eval pipeline, and records store the real span of the stored frames."""

import csv
import json
import os
import pathlib
import subprocess
import sys

import av
import numpy as np
import pytest
import tensorflow as tf

from tadax.data import class_list, pipeline, record_format, records
from tadax.prepare import cli
from tadax.data.config import data_config
from tadax.prepare.synthetic import write_mp4
from tadax.data.video import decode_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NON_UTF8 = b"\xff\xfe\xfa"


def moving_clip(frames: int = 6, size: int = 32, seed: int = 0) -> np.ndarray:
    """(F, size, size, 3) uint8: a smooth random texture shifting 2 pixels a frame."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(30, 220, size=(size, size + 2 * frames, 3))
    base = (base + np.roll(base, 1, 0) + np.roll(base, 1, 1) + np.roll(base, 1, (0, 1))) / 4
    return np.stack([base[:, 2 * i:2 * i + size] for i in range(frames)]).astype(np.uint8)


def write_video(path, clip, fps=25, fmt=None, codec="libx264"):
    """Writes `clip` with PyAV in container `fmt` (None: from the extension) and `codec`."""
    with av.open(str(path), mode="w", format=fmt) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = clip.shape[2], clip.shape[1], "yuv420p"
        for frame in clip:
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def prepare(layout, root, out, splits, *extra):
    """Runs the command's entry point (`python -m tadax.prepare` and `data/prepare.py` call
    `cli.main`) in this process."""
    args = [layout, "--root", str(root), "--out", str(out), "--workers", "1", "--quiet"]
    for name, path in splits.items():
        args += ["--split", f"{name}={path}"]
    assert cli.main(args + list(extra)) == 0


def report_lines(out, split):
    """{source: reason} of `SPLIT-report.txt`."""
    lines = (out / f"{split}-report.txt").read_text().splitlines()[1:]
    return dict(line.split("\t", 1) for line in lines)


def split_records(out, split):
    """Context of every record of a split -> list of dicts."""
    rows = []
    for raw in tf.data.TFRecordDataset(records.shard_files(str(out), split)).as_numpy_iterator():
        ctx = tf.train.SequenceExample.FromString(raw).context.feature
        rows.append({"label": ctx[record_format.LABEL_KEY].int64_list.value[0],
                     "text": ctx[record_format.TEXT_KEY].bytes_list.value[0].decode(),
                     "filename": ctx[record_format.FILENAME_KEY].bytes_list.value[0].decode(),
                     "start_us": ctx[record_format.START_KEY].int64_list.value[0],
                     "end_us": ctx[record_format.END_KEY].int64_list.value[0]})
    return rows


def assert_skips(out, split, written, expected):
    """`written` records, and exactly the `expected` {line suffix: reason part} skipped."""
    summary = json.loads((out / f"{split}.json").read_text())
    assert summary["num_examples"] == written, summary
    skipped = report_lines(out, split)
    assert summary["num_skipped"] == len(skipped) == len(expected), skipped
    for where, why in expected.items():
        hits = [reason for source, reason in skipped.items() if source.endswith(where)]
        assert len(hits) == 1 and why in hits[0], (where, why, skipped)


@pytest.fixture(scope="module")
def good_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    write_mp4(str(path), moving_clip(), 5)
    return path


# ------------------------------------------------- point 1: malformed annotation values


def test_kinetics_csv_malformed_values_are_reported_skips(tmp_path, good_mp4):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.link(good_mp4, videos / "good_000010_000012.mp4")
    lines = [b"label,youtube_id,time_start,time_end,split",
             b"juggling,good,10,12,train",          # 2: the one good row
             b"juggling,good,nan,12,train",         # 3
             b"juggling,good,10,inf,train",         # 4
             b"juggling,good,-inf,12,train",        # 5
             b"juggling,good,1e999,12,train",       # 6
             b"juggling,good,-1,12,train",          # 7
             b"juggling,good,12,10,train",          # 8
             b"juggling,good,10,10,train",          # 9
             b"juggling,good,ten,12,train",         # 10
             b"juggling,good,,12,train",            # 11
             b",good,10,12,train",                  # 12
             b"juggling,,10,12,train",              # 13
             b"juggling,good",                      # 14
             b"juggling," + NON_UTF8 + b",10,12,train",   # 15
             b"juggling,go\0od,10,12,train",        # 16
             b"juggling,missing,10,12,train"]       # 17
    (tmp_path / "train.csv").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    prepare("kinetics", videos, out, {"train": tmp_path / "train.csv"}, "--short-side", "0")
    assert (out / "classes.txt").read_text() == "juggling\n"
    m = "malformed annotation: "
    assert_skips(out, "train", 1, {
        ":3": m + "time_start 'nan' is not finite", ":4": m + "time_end 'inf' is not finite",
        ":5": m + "time_start '-inf' is not finite", ":6": m + "time_start '1e999' is not finite",
        ":7": m + "time_start '-1' is negative", ":8": m + "time_end 10 is not after time_start 12",
        ":9": m + "time_end 10 is not after", ":10": m + "time_start 'ten' is not a number",
        ":11": m + "time_start '' is not a number", ":12": m + "empty label",
        ":13": m + "empty youtube_id", ":14": m + "2 fields, the header has 5",
        ":15": m + "not UTF-8", ":16": m + "contains a NUL byte",
        ":17": f"looked for missing_000010_000012.EXT under {videos}"})


def test_kinetics_list_malformed_lines_are_reported_skips(tmp_path, good_mp4):
    os.link(good_mp4, tmp_path / "good.mp4")
    lines = [b"good.mp4 0", b"good.mp4", b"good.mp4 x", b"good.mp4 -1", b"good.mp4 2",
             b"go" + NON_UTF8 + b"od.mp4 0", b"missing.mp4 1"]
    (tmp_path / "list.txt").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "names.txt").write_text("a\nb\n")
    out = tmp_path / "out"
    prepare("kinetics-list", tmp_path, out, {"train": tmp_path / "list.txt"},
            "--labels", str(tmp_path / "names.txt"))
    assert_skips(out, "train", 1, {
        ":2": "malformed annotation: expected 'path label_index'", ":3": "expected 'path label",
        ":4": "label index -1 out of range", ":5": "label index 2 out of range",
        ":6": "malformed annotation: not UTF-8",
        ":7": f"video file not found: {tmp_path / 'missing.mp4'}"})


def test_ssv2_json_malformed_entries_are_reported_skips(tmp_path, good_mp4):
    os.link(good_mp4, tmp_path / "7.mp4")
    (tmp_path / "labels.json").write_text(json.dumps({"Pushing something": "0",
                                                      "Holding something": "1"}))
    items = [{"id": "7", "template": "Pushing [something]"},     # 0: good
             "7", {}, {"id": None, "template": "Pushing [something]"},
             {"id": ["7"], "template": "Pushing [something]"}, {"id": True, "label_idx": 0},
             {"id": "7", "template": 5}, {"id": "7", "label_idx": "x"},
             {"id": "7", "label_idx": 9}, {"id": "7"}, {"id": "", "label_idx": 1},
             {"id": 8, "label_idx": 1}, {"id": "7", "template": "Dropping [something]"}]
    (tmp_path / "train.json").write_text(json.dumps(items))
    out = tmp_path / "out"
    prepare("ssv2", tmp_path, out, {"train": tmp_path / "train.json"},
            "--labels", str(tmp_path / "labels.json"))
    m = "malformed annotation: "
    assert_skips(out, "train", 1, {
        "[1]": m + "expected an object, got str", "[2]": m + "'id' None is not a video id",
        "[3]": m + "'id' None", "[4]": m + "'id' ['7']", "[5]": m + "'id' True",
        "[6]": m + "'template' 5 is not a string", "[7]": m + "'label_idx' 'x' is not an integer",
        "[8]": "label_idx 9 out of range (0..1)", "[9]": m + "no 'template' or 'label_idx'",
        "[10]": m + "'id' ''", "[11]": "looked for 8.EXT", "[12]": "unknown label"})


def test_ssv1_csv_malformed_lines_are_reported_skips(tmp_path):
    frames = tmp_path / "frames"
    (frames / "1").mkdir(parents=True)
    for i, frame in enumerate(moving_clip(3)):
        tf.io.write_file(str(frames / "1" / f"{i + 1:05d}.jpg"), tf.io.encode_jpeg(frame))
    (tmp_path / "labels.csv").write_text("Pushing something\nHolding something\n")
    lines = [b"1;Pushing something", b";Holding something", b"..;Holding something",
             b"a/1;Holding something", b"1", b"1;", b"1" + NON_UTF8 + b";Holding something",
             b"2;Holding something", b"1;Dropping something"]
    (tmp_path / "train.csv").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    prepare("ssv1", frames, out, {"train": tmp_path / "train.csv"},
            "--labels", str(tmp_path / "labels.csv"))
    m = "malformed annotation: "
    assert_skips(out, "train", 1, {
        ":2": m + "id '' is not a folder name", ":3": m + "id '..' is not a folder name",
        ":4": m + "id 'a/1'", ":5": m + "expected 'id;label', got '1'",
        ":6": m + "expected 'id;label', got '1;'", ":7": m + "not UTF-8",
        ":8": f"frame folder not found: {frames / '2'}", ":9": "unknown label"})


def test_generic_csv_malformed_rows_are_reported_skips(tmp_path, good_mp4):
    os.link(good_mp4, tmp_path / "good.mp4")
    lines = [b"path,label", b"good.mp4,cat", b",cat", b"good.mp4,", b"good.mp4",
             b"go" + NON_UTF8 + b"od.mp4,cat", b"good.mp4,c\0at", b"missing.mp4,cat",
             b'"good.mp4,cat', b"this line is swallowed by the open quote,cat"]
    (tmp_path / "train.csv").write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    prepare("generic", tmp_path, out, {"train": tmp_path / "train.csv"})
    assert (out / "classes.txt").read_text() == "cat\n"        # no empty class name
    m = "malformed annotation: "
    assert_skips(out, "train", 1, {
        ":3": m + "expected 'path,label', got ',cat'", ":4": m + "empty label",
        ":5": m + "expected 'path,label', got 'good.mp4'", ":6": m + "not UTF-8",
        ":7": m + "contains a NUL byte", ":8": f"video file not found: {tmp_path / 'missing.mp4'}",
        ":9": m + "a quoted field spans lines"})


# ------------------------------------------------- point 4: bad command lines


def run_command(*args, env_extra=None):
    """`python data/prepare.py ARGS` in a fresh process -> (exit status, stderr lines)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, os.path.join(REPO, "data", "prepare.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    return proc.returncode, proc.stderr.splitlines()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Annotation files of each kind (and wrong kinds) for command-line tests."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "videos").mkdir()
    (d / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                 "a,x,0,2,train\n")
    (d / "train.json").write_text(json.dumps([{"id": "1", "template": "a"}]))
    (d / "labels.json").write_text(json.dumps({"a": "0"}))
    (d / "labels_broken.json").write_text('{"a": "0",')
    (d / "labels_list.json").write_text('["a"]')
    (d / "labels_bad_index.json").write_text('{"a": "zero"}')
    (d / "a_file").write_text("x")
    (d / "a_folder").mkdir()
    return d


def _bad_command_lines(d):
    v, csv_, js = str(d / "videos"), f"train={d / 'train.csv'}", f"train={d / 'train.json'}"
    out = str(d / "out")
    return {
        "out_is_a_file": (["kinetics", "--root", v, "--split", csv_, "--out", str(d / "a_file")],
                          "--out"),
        "shards_negative": (["kinetics", "--root", v, "--split", csv_, "--out", out,
                             "--shards", "-1"], "argument --shards"),
        "shards_not_a_number": (["kinetics", "--root", v, "--split", csv_, "--out", out,
                                 "--shards", "two"], "argument --shards"),
        "workers_zero": (["kinetics", "--root", v, "--split", csv_, "--out", out,
                          "--workers", "0"], "argument --workers"),
        "jpeg_quality_high": (["kinetics", "--root", v, "--split", csv_, "--out", out,
                               "--jpeg-quality", "101"], "argument --jpeg-quality"),
        "target_fps_nan": (["kinetics", "--root", v, "--split", csv_, "--out", out,
                            "--target-fps", "nan"], "argument --target-fps"),
        "json_as_kinetics_csv": (["kinetics", "--root", v, "--split", js, "--out", out],
                                 "--split"),
        "csv_as_ssv2_json": (["ssv2", "--root", v, "--split", csv_, "--out", out, "--labels",
                              str(d / "labels.json")], "--split"),
        "labels_not_json": (["ssv2", "--root", v, "--split", js, "--out", out, "--labels",
                             str(d / "labels_broken.json")], "--labels"),
        "labels_not_an_object": (["ssv2", "--root", v, "--split", js, "--out", out, "--labels",
                                  str(d / "labels_list.json")], "--labels"),
        "labels_bad_index": (["ssv2", "--root", v, "--split", js, "--out", out, "--labels",
                              str(d / "labels_bad_index.json")], "--labels"),
        "labels_missing": (["kinetics", "--root", v, "--split", csv_, "--out", out, "--labels",
                            str(d / "nope.txt")], "--labels"),
        "ssv2_without_labels": (["ssv2", "--root", v, "--split", js, "--out", out], "--labels"),
        "root_missing": (["kinetics", "--split", csv_, "--out", out], "--root"),
        "root_not_a_folder": (["kinetics", "--root", str(d / "a_file"), "--split", csv_,
                               "--out", out], "--root"),
        "split_missing": (["kinetics", "--root", v, "--split", f"train={d / 'nope.csv'}",
                           "--out", out], "--split"),
        "split_is_a_folder": (["kinetics", "--root", v, "--split", f"train={d / 'a_folder'}",
                               "--out", out], "--split"),
        "split_without_name": (["kinetics", "--root", v, "--split", str(d / "train.csv"),
                                "--out", out], "--split"),
        "split_name_with_slash": (["kinetics", "--root", v, "--split", f"a/b={d / 'train.csv'}",
                                   "--out", out], "--split"),
    }


BAD_COMMAND_LINES = sorted(_bad_command_lines(pathlib.Path("unused")))


@pytest.mark.parametrize("case", BAD_COMMAND_LINES)
def test_bad_command_line_is_one_line_without_traceback(inputs, case):
    argv, argument = _bad_command_lines(inputs)[case]
    rc, err = run_command(*argv)
    assert rc != 0
    assert not any("Traceback" in line for line in err), err
    usage = [i for i, line in enumerate(err) if line.startswith("usage:")]
    message = err[-1]
    if usage:                          # argparse: its usage block, then one error line
        assert usage == [0] and all(line.startswith(" ") for line in err[1:-1]), err
    else:
        assert len(err) == 1, err
    assert message.startswith("data/prepare.py: error: ") and argument in message, err
    assert not (inputs / "out").exists()          # nothing written before the inputs are checked


def test_unreadable_split_file_in_process(inputs, tmp_path, monkeypatch, capsys):
    """A split file that cannot be read (simulated: file modes do not stop root, which CI
    runs as) is one line naming --split."""
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(class_list.epath.Path, "read_bytes", refuse)
    rc = cli.main(["kinetics", "--root", str(inputs / "videos"), "--split",
                   f"train={inputs / 'train.csv'}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(
        "python -m tadax.prepare: error: --split: ")
    assert "cannot read (PermissionError" in err[0] and not (tmp_path / "out").exists()


def test_tensorflow_start_up_lines_only_with_verbose(tmp_path, good_mp4):
    os.link(good_mp4, tmp_path / "x_000000_000002.mp4")
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                        "a,x,0,2,train\n")
    argv = ["kinetics", "--root", str(tmp_path), "--split", f"train={tmp_path / 'train.csv'}",
            "--quiet", "--workers", "1"]
    rc, quiet = run_command(*argv, "--out", str(tmp_path / "quiet"))
    assert rc == 0 and len(quiet) == 1 and quiet[0].startswith("train: 1 videos written"), quiet
    rc, verbose = run_command(*argv, "--out", str(tmp_path / "verbose"), "--verbose")
    assert rc == 0 and verbose[-1].startswith("train: 1 videos written")
    assert len(verbose) > 1, "--verbose shows TensorFlow's start-up lines"


# ------------------------------------------------- point 5: containers, unlabelled, times


def test_mpg_and_ts_files_decode_and_the_real_span_is_stored(tmp_path):
    """.mpg (MPEG-1 program stream) and .ts (MPEG-2 transport stream) clips under Kinetics
    names: both are found and decoded; the records' times are the decoded frames' own (a
    transport stream starts at 1.4 s), not the CSV's 10..12 s."""
    videos = tmp_path / "videos"
    videos.mkdir()
    clip = moving_clip(8)
    write_video(videos / "mpg_000010_000012.mpg", clip, fmt="mpeg", codec="mpeg1video")
    write_video(videos / "ts_000010_000012.ts", clip, fmt="mpegts", codec="mpeg2video")
    (videos / "other_000010_000012.xyz").write_bytes(b"not a video")
    rows = [["a", vid, 10, 12, "train"] for vid in ("mpg", "ts", "other")]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"]]
                                + rows)
    out = tmp_path / "out"
    prepare("kinetics", videos, out, {"train": tmp_path / "train.csv"}, "--short-side", "0")
    recs = {r["filename"]: r for r in split_records(out, "train")}
    assert sorted(recs) == ["mpg_000010_000012.mpg", "ts_000010_000012.ts"]
    for name, rec in recs.items():
        ref = decode_video(str(videos / name))
        assert len(ref.frames) == len(clip)
        assert (rec["start_us"], rec["end_us"]) == (ref.start_us, ref.end_us), name
        assert abs(rec["end_us"] - rec["start_us"] - 8 * 40_000) <= 1   # 8 frames at 25 fps
    assert recs["ts_000010_000012.ts"]["start_us"] > 0
    (source, reason), = report_lines(out, "train").items()
    assert source.endswith(":4")
    assert f"looked for other_000010_000012.EXT under {videos}" in reason
    assert " mpg " in reason and " ts " in reason and "mp4" in reason


def test_unlabelled_test_lists_give_label_minus_one_and_eval_reads_them(tmp_path, good_mp4):
    """The SSv2 test list (ids only) and Kinetics CSVs without labels (no label column, an
    empty one) are written as unlabelled splits (label -1, no text); the eval pipeline
    reads them."""
    for vid in ("7", "8"):
        os.link(good_mp4, tmp_path / f"{vid}.mp4")
    os.link(good_mp4, tmp_path / "k_000000_000002.mp4")
    (tmp_path / "labels.json").write_text(json.dumps({"a": "0", "b": "1"}))
    (tmp_path / "test.json").write_text(json.dumps([{"id": "7"}, {"id": 8}, {"id": "9"}]))
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\n"
                                       "k,0,2,test\n")
    (tmp_path / "test_empty_labels.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                                    ",k,0,2,test\n")
    out = tmp_path / "out"
    prepare("ssv2", tmp_path, out, {"test": tmp_path / "test.json"},
            "--labels", str(tmp_path / "labels.json"), "--shards", "0")
    assert sorted((r["filename"], r["label"], r["text"]) for r in split_records(out, "test")) \
        == [("7.mp4", -1, ""), ("8.mp4", -1, "")]
    assert list(report_lines(out, "test")) == [f"{tmp_path / 'test.json'}[2]"]
    assert (out / "classes.txt").read_text() == "a\nb\n"
    prepare("kinetics", tmp_path, out, {"ktest": tmp_path / "test.csv",
                                        "ktest2": tmp_path / "test_empty_labels.csv"})
    for split in ("ktest", "ktest2"):
        assert [(r["label"], r["text"]) for r in split_records(out, split)] == [(-1, "")]

    cfg = data_config(dataset="ssv2", data_dir=str(out), num_frames=4, test_scale=32,
                      test_crop_size=32, num_clips=2, num_crops=1)
    batches = list(pipeline.build_eval_iterator(cfg, split="test", global_batch_size=4,
                                                multi_view=True))
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert mask.sum() == 4 and np.all(labels == -1)
    assert batches[0]["video"].shape == (4, 4, 32, 32, 3)
