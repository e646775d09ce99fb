"""The Apache Beam path of `python -m tadax.prepare` (`--runner DirectRunner`, two worker processes)
writes the same shards and report, byte for byte, as the local path, and training and
evaluation read them. Needs the optional extra: pip install apache-beam==2.77.0 'pillow<13'."""

import csv
import hashlib

import numpy as np
import pytest

pytest.importorskip("apache_beam", reason="Apache Beam is an optional extra: "
                    "pip install apache-beam==2.77.0 'pillow<13'")

from tadax.data import pipeline, records  # noqa: E402
from tadax.data.config import data_config  # noqa: E402
from tadax.prepare import cli  # noqa: E402
from tadax.prepare.synthetic import write_mp4  # noqa: E402

LABELS = ("abseiling", "juggling", "zumba")
SPLITS = {"train": 8}


def _dataset(root):
    """Kinetics layout: clips, one corrupt clip and one row without a file (one split: each
    split is a pipeline run, and starting one costs seconds)."""
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = {}
    for split, count in SPLITS.items():
        rows = []
        for i in range(count):
            name = f"{split}{i}"
            clip = np.repeat(rng.integers(0, 255, (1, 24, 32, 3), dtype=np.uint8), 6, axis=0)
            write_mp4(str(root / "videos" / f"{name}_000000_000002.mp4"), clip, 5)
            rows.append([LABELS[i % 3], name, 0, 2, split])
        (root / "videos" / f"bad{split}_000000_000002.mp4").write_bytes(b"not a video")
        rows += [[LABELS[0], f"bad{split}", 0, 2, split], [LABELS[1], "absent", 0, 2, split]]
        paths[split] = root / f"{split}.csv"
        with open(paths[split], "w", newline="") as f:
            csv.writer(f).writerows([["label", "youtube_id", "time_start", "time_end", "split"]]
                                    + rows)
    return paths


def _prepare(root, paths, out, *extra):
    args = ["kinetics", "--quiet", "--root", str(root / "videos"), "--out", str(out),
            "--shards", "3", "--short-side", "0", "--workers", "1"]
    for split, path in paths.items():
        args += ["--split", f"{split}={path}"]
    return cli.main(args + list(extra))


def _digests(out) -> dict:
    files = [f for split in SPLITS for f in records.shard_files(str(out), split)]
    files += [str(out / f"{split}-report.txt") for split in SPLITS] + [str(out / "classes.txt")]
    return {f.split("/")[-1]: hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}


def test_beam_direct_runner_writes_the_local_bytes_and_feeds_training(tmp_path):
    paths = _dataset(tmp_path / "raw")
    assert _prepare(tmp_path / "raw", paths, tmp_path / "local") == 0
    assert _prepare(tmp_path / "raw", paths, tmp_path / "beam", "--runner", "DirectRunner",
                    "--direct_num_workers", "2", "--direct_running_mode", "multi_processing") == 0
    assert _digests(tmp_path / "beam") == _digests(tmp_path / "local")
    meta = [sorted(p.name for p in (tmp_path / out / "_meta").iterdir())
            for out in ("beam", "local")]
    assert meta[0] == meta[1]                          # the pipeline's job files are gone
    report = (tmp_path / "beam" / "train-report.txt").read_text()
    assert "badtrain_000000_000002.mp4" in report and "video file not found" in report

    cfg = data_config(dataset="kinetics-beam", data_dir=str(tmp_path / "beam"), num_classes=3,
                      num_frames=4, train_crop_size=16, test_scale=16, test_crop_size=16,
                      randaugment="", num_clips=1, num_crops=1)
    batch = next(pipeline.build_train_iterator(cfg, global_batch_size=4, seed=0,
                                               process_index=0, process_count=1))
    assert batch["video"].shape == (4, 4, 16, 16, 3)
    assert set(batch["label"].tolist()) <= {0, 1, 2}
    seen = [b["video_id"][b["mask"]] for b in pipeline.build_eval_iterator(
        cfg, split="train", global_batch_size=3, multi_view=False, process_index=0, process_count=1)]
    assert sorted(np.concatenate(seen).tolist()) == list(range(SPLITS["train"]))


def test_unusable_runner_is_one_line_before_any_work(tmp_path, capsys):
    paths = _dataset(tmp_path / "raw")
    for runner, needle in (("Nope", "Unexpected pipeline runner"),
                           ("DataflowRunner", "Missing required option: project")):
        capsys.readouterr()
        assert _prepare(tmp_path / "raw", paths, tmp_path / "out", "--runner", runner) == 2
        message = capsys.readouterr().err
        assert message.startswith(f"python -m tadax.prepare: error: --runner {runner}: "), message
        assert needle in message and message.count("\n") == 1, message
        assert not (tmp_path / "out").exists()
