"""Re-running a preparation: a run of `data/prepare.py` interrupted and finished by another
process (`python -m tadax.prepare`, from another directory) gives the same bytes as an
uninterrupted one; a re-run with other inputs or options is refused, naming the
change, and `--overwrite` rebuilds the split as a fresh run would."""

import csv
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tadax.data import records
from tadax.prepare import cli
from tadax.prepare.synthetic import write_mp4

from conftest import REPO_ROOT

LABELS = ("abseiling", "juggling", "zumba")


def _clip(seed: int, frames: int, height: int, width: int) -> np.ndarray:
    """(F, H, W, 3) uint8 smooth noise moving a pixel a frame (compresses like real video)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height // 4, (width + frames) // 4 + 1, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(base, 4, axis=0), 4, axis=1)
    return np.stack([big[:, i:i + width] for i in range(frames)])


def _kinetics(root, count: int, frames: int, size=(64, 80)):
    """A Kinetics layout of `count` clips under root/videos and root/train.csv; returns the CSV."""
    (root / "videos").mkdir(parents=True)
    rows = []
    for i in range(count):
        write_mp4(str(root / "videos" / f"v{i:03d}_000000_000002.mp4"), _clip(i, frames, *size), 10)
        rows.append([LABELS[i % 3], f"v{i:03d}", 0, 2, "train"])
    csv_path = root / "train.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"]] + rows)
    return csv_path


def _command(root, csv_path, out, *extra, module=False):
    """The command line: the checkout's `data/prepare.py`, or (`module`) `python -m
    tadax.prepare`, which needs no checkout."""
    entry = ["-m", "tadax.prepare"] if module else [str(REPO_ROOT / "data" / "prepare.py")]
    return [sys.executable, *entry, "kinetics", "--quiet", "--root", str(root / "videos"),
            "--out", str(out), "--split", f"train={csv_path}", "--workers", "1", *extra]


def _digests(out) -> dict:
    """sha256 of every shard and of the report, by file name."""
    files = records.shard_files(str(out), "train") + [str(out / "train-report.txt")]
    return {os.path.basename(f): hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}


def test_interrupted_run_resumed_in_another_process_is_byte_identical(tmp_path):
    # 3 clips a shard: writing one takes many polling intervals, so the kill lands mid-run.
    csv_path = _kinetics(tmp_path / "raw", count=18, frames=30, size=(96, 128))
    with open(csv_path, "a") as f:
        f.write("zumba,absent,0,2,train\n")           # a reported skip, in the report too
    interrupted, whole = tmp_path / "interrupted", tmp_path / "whole"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen(_command(tmp_path / "raw", csv_path, interrupted, "--shards", "6"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((interrupted / "_meta").glob("train-*-of-00006.json")):
        assert proc.poll() is None, "the run ended before a completed shard was seen"
        assert time.time() < deadline, "no shard completed in 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = sorted(p.name for p in interrupted.glob("train-*-of-00006"))
    assert 1 <= len(written) < 6, f"not interrupted mid-way: {written}"
    # Two more processes: the resume as `python -m tadax.prepare` from another directory (this
    # checkout's package first on the path, as an install would give it), and a whole run.
    more = [subprocess.Popen(_command(tmp_path / "raw", csv_path, out, "--shards", "6",
                                      module=module), cwd=tmp_path,
                             env=dict(env, PYTHONPATH=str(REPO_ROOT)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for out, module in ((interrupted, True), (whole, False))]
    for p in more:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
    assert _digests(interrupted) == _digests(whole)
    assert len(_digests(whole)) == 7
    assert "video file not found" in (whole / "train-report.txt").read_text()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A small Kinetics layout prepared once (3 shards, short side 32)."""
    root = tmp_path_factory.mktemp("reruns")
    csv_path = _kinetics(root, count=6, frames=4)
    out = root / "out"
    _run(root, csv_path, out)
    return root, csv_path, out


def _run(root, csv_path, out, *extra):
    args = ["kinetics", "--quiet", "--root", str(root / "videos"), "--out", str(out),
            "--split", f"train={csv_path}", "--workers", "1", "--shards", "3",
            "--short-side", "32"]
    return cli.main(args + list(extra))


def _change_csv(root, csv_path):
    write_mp4(str(root / "videos" / "extra_000000_000002.mp4"), _clip(99, 4, 64, 80), 10)
    text = csv_path.read_text()
    csv_path.write_text(text + "zumba,extra,0,2,train\n")
    return [], "1 video(s) added"


def _change_video(root, csv_path):
    video = root / "videos" / "v002_000000_000002.mp4"
    write_mp4(str(video), _clip(77, 5, 64, 80), 10)
    os.utime(video, (time.time() + 10, time.time() + 10))   # a later time, whatever the clock
    return [], "1 video(s) changed"


@pytest.mark.parametrize("change", ["one more CSV row", "short side", "shards", "modified video",
                                    "frame encoding"])
def test_rerun_with_other_inputs_is_refused_then_overwritten(prepared, tmp_path, capsys, change,
                                                             monkeypatch):
    root, csv_path, out = prepared
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)                       # keeps modification times
    root, csv_path, out = copy, copy / "train.csv", copy / "out"
    before = _digests(out)
    extra_args, needle = {
        "one more CSV row": lambda: _change_csv(root, csv_path),
        "short side": lambda: (["--short-side", "48"], "short_side 32 -> 48"),
        "shards": lambda: (["--shards", "2"], "num_shards 3 -> 2"),
        "modified video": lambda: _change_video(root, csv_path),
        # A newer tadax that makes its JPEGs another way does not resume over these shards.
        "frame encoding": lambda: (monkeypatch.setattr(cli, "FRAME_ENCODING", "another way"),
                                   ([], "frame_encoding"))[1],
    }[change]()
    capsys.readouterr()
    assert _run(root, csv_path, out, *extra_args) == 2
    message = capsys.readouterr().err
    assert message.startswith("python -m tadax.prepare: error: ") and message.count("\n") == 1, message
    assert needle in message and "--overwrite" in message, message
    assert _digests(out) == before                    # nothing touched
    assert _run(root, csv_path, out, *extra_args, "--overwrite") == 0
    fresh = tmp_path / "fresh"
    assert _run(root, csv_path, fresh, *extra_args) == 0
    assert _digests(out) == _digests(fresh)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())
    assert _run(root, csv_path, out, *extra_args) == 0   # same inputs again: resumes, no refusal


def test_runner_without_beam_installed_is_one_line(prepared, monkeypatch, capsys):
    root, csv_path, out = prepared
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "apache_beam" else real(name, *a))
    assert _run(root, csv_path, out, "--runner", "DirectRunner") == 2
    assert capsys.readouterr().err.startswith(
        "python -m tadax.prepare: error: --runner DirectRunner: Apache Beam is not installed")
