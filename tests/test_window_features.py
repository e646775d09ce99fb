"""Features per window (`python -m tadax.features --videos DIR --window W --stride S`):
window counts and times on videos of known length and rate, each window's features equal
to the features of the same frames as one clip, the index, resuming, and bad input."""

import json
import sys

import numpy as np
import pytest

import command_server
from conftest import REPO_ROOT
from test_features import random_variables

WINDOW, STRIDE = 16, 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny TAdaFormer with random weights (the quick start's model: 8 frames, 32 px) saved
    as a model directory, and a folder: `long/a.mp4` 37 frames at 8 fps, `b.mp4` 10 frames
    at 25 fps (48x64, shorter than one window), `broken.mp4` not a video."""
    from configs import quickstart
    from tadax.features import extract as features
    from tadax.checkpoint_io import save_variables
    from tadax.models import build_model
    from tadax.prepare import synthetic

    root = tmp_path_factory.mktemp("window_features")
    config = quickstart.get_config()
    config.eval.batch_size = 4
    config.features.decode_workers = 2
    model = build_model(config.model)
    variables = random_variables(model, config.model)
    save_variables(str(root / "ckpt"), variables, config.model)
    folder = root / "videos"
    (folder / "long").mkdir(parents=True)
    rng = np.random.default_rng(0)
    synthetic.write_mp4(str(folder / "long" / "a.mp4"),
                        synthetic.class_clip(rng, "moving down", 37, 32), 8)
    synthetic.write_mp4(str(folder / "b.mp4"), rng.integers(0, 255, (10, 48, 64, 3), np.uint8), 25)
    (folder / "broken.mp4").write_bytes(b"not a video")
    step = features.features_step(model, features.local_mesh(), False)

    def one_clip_at_a_time(clips):
        """Each clip's features computed alone (zeros beside it, in the command's batch shape,
        so no compile is added)."""
        pad = np.zeros((config.eval.batch_size - 1,) + clips.shape[1:], clips.dtype)
        return np.stack([np.asarray(step(variables, np.concatenate([c[None], pad])))[0]
                         for c in clips])

    return dict(root=root, config=config, ckpt=str(root / "ckpt"), folder=folder,
                features=one_clip_at_a_time)


def _extract(setup, output, **kwargs):
    from tadax.features import windows as window_features

    return window_features.extract_windows(setup["config"], checkpoint=setup["ckpt"],
                                           output=str(output), videos=str(setup["folder"]),
                                           **kwargs)


def _clip_features(setup, path, frame_lists):
    """Features of each list of frame indices of `path` as one clip, from the whole decoded
    video: the reference, independent of the windows' streaming."""
    from tadax.data.video import decode_video
    from tadax.data.windows import window_clip
    from tadax.features.extract import clip_data_config

    data_cfg = clip_data_config(setup["config"].data, setup["config"].model)
    frames = decode_video(str(path), short_side=data_cfg.test_scale).frames
    return setup["features"](np.stack([window_clip(frames[idx], data_cfg) for idx in frame_lists]))


def _frames_of_window(k, window=WINDOW, num_frames=8):
    """Window k's frames as the module doc defines them: its first and last frame and
    num_frames - 2 evenly between, rounded down."""
    return [k * STRIDE + i * (window - 1) // (num_frames - 1) for i in range(num_frames)]


def test_window_counts_times_and_features_at_the_videos_rate(setup, tmp_path):
    """Bugs: window times off by one stride or in frames instead of seconds; the last partial
    window counted (7 windows instead of 6); features of the wrong frames (e.g. offsets
    spaced by window/T instead of (window-1)/(T-1), or frames dropped before the windows
    that need them are out); a video shorter than a window dropped."""
    summary = _extract(setup, tmp_path, window=WINDOW, stride=STRIDE)
    assert sorted(summary["written"]) == ["b", "long/a"] and summary["skipped"] == ["broken"]
    assert summary["index"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert (index["window"], index["stride"], index["fps"], index["model_frames"]) == \
        (WINDOW, STRIDE, None, 8)
    assert index["arch"] == "tadaformer_tiny" and index["checkpoint"] == setup["ckpt"]
    assert set(index["videos"]) == {"b", "long/a"} and "cannot open" in index["skipped"]["broken"]

    a = index["videos"]["long/a"]
    assert (a["file"], a["source"], a["fps"], a["num_frames"]) == ("long/a.npy", "long/a.mp4", 8.0, 37)
    assert a["num_windows"] == 6 == (37 - WINDOW) // STRIDE + 1
    np.testing.assert_allclose(a["start"], [k * STRIDE / 8 for k in range(6)])
    np.testing.assert_allclose(a["end"], [(k * STRIDE + WINDOW) / 8 for k in range(6)])
    feats = np.load(tmp_path / "long" / "a.npy")
    assert feats.shape == (6, setup["config"].model.width) and feats.dtype == np.float32
    want = _clip_features(setup, setup["folder"] / "long" / "a.mp4",
                          [_frames_of_window(k) for k in range(6)])
    np.testing.assert_allclose(feats, want, atol=1e-5)

    # Shorter than one window: one window over all 10 frames, the last one repeated.
    b = index["videos"]["b"]
    assert (b["num_windows"], b["start"], b["end"], b["duration"]) == (1, [0.0], [0.4], 0.4)
    want = _clip_features(setup, setup["folder"] / "b.mp4",
                          [[min(i, 9) for i in _frames_of_window(0)]])
    np.testing.assert_allclose(np.load(tmp_path / "b.npy"), want, atol=1e-5)


def test_windows_counted_at_a_resampled_rate(setup, tmp_path):
    """`--fps 12` on the 8 fps video: 4.625 s make 56 frame slots, slot j the frame nearest
    j / 12 s (frame round(2 j / 3)); 11 windows starting every 4/12 s. Bugs: times in the
    video's own frames, the resampling's nearest frame off by one, the window counted
    from the native frames (6)."""
    summary = _extract(setup, tmp_path, window=WINDOW, stride=STRIDE, fps=12.0)
    assert "long/a" in summary["written"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["fps"] == 12.0
    a = index["videos"]["long/a"]
    assert (a["fps"], a["num_frames"], a["num_windows"]) == (12.0, 56, 11)
    np.testing.assert_allclose(a["start"], [k * STRIDE / 12 for k in range(11)])
    np.testing.assert_allclose(a["end"], [(k * STRIDE + WINDOW) / 12 for k in range(11)])
    nearest = lambda j: min(int(np.floor(j * 8 / 12 + 0.5)), 36)  # noqa: E731
    want = _clip_features(setup, setup["folder"] / "long" / "a.mp4",
                          [[nearest(j) for j in _frames_of_window(k)] for k in range(11)])
    np.testing.assert_allclose(np.load(tmp_path / "long" / "a.npy"), want, atol=1e-5)


def test_rerun_computes_only_unfinished_videos_and_refuses_other_settings(setup, tmp_path):
    """Bugs: a re-run that recomputes every video (or none after a deletion); an index
    written while a video is missing; other settings mixed into the same folder."""
    from tadax.data import windows

    _extract(setup, tmp_path, window=WINDOW, stride=STRIDE)
    kept = (tmp_path / "b.npy").stat().st_mtime_ns
    (tmp_path / "long" / "a.npy").unlink()
    (tmp_path / "index.json").unlink()
    summary = _extract(setup, tmp_path, window=WINDOW, stride=STRIDE)
    assert summary["written"] == ["long/a"] and summary["skipped"] == [] and summary["index"]
    assert (tmp_path / "b.npy").stat().st_mtime_ns == kept
    assert set(json.loads((tmp_path / "index.json").read_text())["videos"]) == {"b", "long/a"}

    # Two hosts: host 1 of 2 alone leaves the index unwritten, host 0 then completes it.
    two = tmp_path / "two"
    assert not _extract(setup, two, window=WINDOW, stride=STRIDE, process_index=1,
                        process_count=2)["index"]
    assert not (two / "index.json").exists()
    assert _extract(setup, two, window=WINDOW, stride=STRIDE, process_index=0,
                    process_count=2)["index"]
    np.testing.assert_allclose(np.load(two / "long" / "a.npy"), np.load(tmp_path / "long" / "a.npy"),
                               atol=1e-6)

    with pytest.raises(ValueError, match="stride: 4 there, 8 now"):
        _extract(setup, tmp_path, window=WINDOW, stride=8)
    with pytest.raises(ValueError, match="sampled by segment.*give --window"):
        _extract(setup, tmp_path / "x", stride=STRIDE)
    with pytest.raises(ValueError, match="--window 4 is shorter than the 8 frames"):
        windows.WindowSpec(4, 1, 8).check()


def test_command_line_progress_and_one_line_errors(setup, tmp_path):
    """The command as a user types it: progress with videos/s and the ETA, the summary line;
    bad input ends in one line and no traceback. Bugs: windows flags silently ignored
    (shards written instead), a traceback for a flag mistake."""
    base = [sys.executable, "-m", "tadax.features", "--checkpoint", setup["ckpt"],
            "--config=configs/quickstart.py", "--config.eval.batch_size=4"]
    run = command_server.run(base + ["--videos", str(setup["folder"]), "--output", str(tmp_path / "o"),
                                 "--window", "16", "--stride", "4"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "3/3 videos" in run.stderr and "videos/s" in run.stderr and "ETA 0:00:00" in run.stderr
    assert "wrote the windows of 2 videos (1 unreadable" in run.stdout
    assert (tmp_path / "o" / "long" / "a.npy").exists() and not list((tmp_path / "o").glob("*.npz"))
    bad = command_server.run(base + ["--output", str(tmp_path / "bad"), "--split", "val",
                                 "--window", "16"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "give the folder with --videos" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
