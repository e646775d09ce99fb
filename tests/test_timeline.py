"""`eval.py --video long.mp4 --timeline OUT`: the model's clip slid over a whole video.

The class change is real: the quick-start model (conftest's shared background run) on a
generated video whose motion changes halfway. The memory bound is measured as process
RSS, for a video and one 4x longer.
"""

import json
import subprocess
import sys

import av
import numpy as np
import pytest

import command_server
from conftest import REPO_ROOT, background_run

pytestmark = pytest.mark.background("quickstart")

FPS, CLIP = 8, 16
FIRST, SECOND = "moving left to right", "moving down"


def test_segments_split_halfway_between_window_centres():
    """Bugs: a segment boundary at a window's start or end instead of halfway between the
    centres of the windows on either side; a run cut one window late; the mean probability
    of the wrong class."""
    from tadax.timeline import segments_of

    start = np.arange(6) * 0.5
    end = start + 2.0
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6], [0.6, 0.4]])
    got = segments_of(probs, start, end)
    assert [(s["class"], s["windows"]) for s in got] == [(0, 3), (1, 2), (0, 1)]
    np.testing.assert_allclose([(s["start"], s["end"]) for s in got],
                               [(0.0, 2.25), (2.25, 3.25), (3.25, 4.5)])
    np.testing.assert_allclose([s["mean_prob"] for s in got], [0.8, 0.7, 0.6])


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The trained quick-start run, its class names as a --labels file, and a video of
    three clips of FIRST then three of SECOND (the same scene, 8 fps: the motion changes
    at 6 s)."""
    from tadax.prepare import synthetic

    run = background_run("quickstart") / "workdirs" / "quickstart"
    root = tmp_path_factory.mktemp("timeline")
    (root / "classes.txt").write_text("\n".join(synthetic.CLASSES) + "\n")
    clips = [synthetic.class_clip(np.random.default_rng(2), name, CLIP, 32)
             for name in [FIRST] * 3 + [SECOND] * 3]
    synthetic.write_mp4(str(root / "change.mp4"), np.concatenate(clips), FPS)
    return dict(run=run, root=root)


def _eval(*args):
    return command_server.run([sys.executable, "eval.py", *map(str, args)], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)


def test_timeline_changes_class_where_the_motion_does(quickstart, tmp_path):
    """21 windows of 16 frames every 4 (0.5 s); the summary has two segments, FIRST then
    SECOND, split within one stride of 6 s. Bugs: window times off by a stride (the split
    moves 0.5 s), windows built from the wrong frames or the clip sampled against the
    model's training (no clean split), top-5 lists unsorted, the PNG or arrays missing."""
    out = tmp_path / "timeline"
    run = _eval("--checkpoint", quickstart["run"], "--video", quickstart["root"] / "change.mp4",
                "--timeline", out, "--window", CLIP, "--stride", 4,
                "--labels", quickstart["root"] / "classes.txt")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "21/21 windows" in run.stderr and "windows/s" in run.stderr and "ETA" in run.stderr
    assert "21 windows of 16 frames every 4 frames at 8 fps (0.00-12.00 s), 2 segments" in run.stdout
    doc = json.loads((out / "timeline.json").read_text())
    assert (doc["window"], doc["stride"], doc["fps"], doc["model_frames"]) == (16, 4, 8.0, 8)
    first, second = doc["segments"]
    assert (first["label"], second["label"]) == (FIRST, SECOND)
    assert abs(first["end"] - 6.0) <= 0.5 and second["start"] == first["end"]
    assert (first["start"], second["end"]) == (0.0, 12.0)
    assert f"{FIRST}  (p " in run.stdout and f"{SECOND}  (p " in run.stdout
    windows = doc["windows"]
    assert len(windows) == 21
    np.testing.assert_allclose([w["start"] for w in windows], np.arange(21) * 0.5)
    np.testing.assert_allclose([w["end"] for w in windows], np.arange(21) * 0.5 + 2.0)
    arrays = np.load(out / "timeline.npz")
    np.testing.assert_allclose(arrays["probs"].sum(-1), 1.0, atol=1e-5)
    for w, row in zip(windows, arrays["probs"]):
        assert [t["class"] for t in w["top5"]] == list(np.argsort(-row, kind="stable")[:5])
        np.testing.assert_allclose([t["prob"] for t in w["top5"]], np.sort(row)[::-1][:5], atol=1e-6)
    assert (out / "timeline.png").stat().st_size > 10_000


def test_unreadable_video_is_a_user_error_naming_it(tmp_path):
    """eval.py prints USER_ERRORS as one line (tests/test_cli_errors.py); an unreadable
    video must be one of them, naming the file, before anything is written."""
    from tadax.data.config import data_config
    from tadax.data.video import VideoDecodeError
    from tadax.data.windows import WindowSpec
    from tadax.timeline import run_timeline
    from tadax.train.cli import USER_ERRORS

    assert issubclass(VideoDecodeError, USER_ERRORS)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    for name in ("missing.mp4", "broken.mp4"):
        with pytest.raises(VideoDecodeError, match=name):
            run_timeline(str(tmp_path / name), WindowSpec(8, 4, 8), data_config(), None, 1,
                         str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _write_360p(path, frames):
    """`frames` frames of 640 x 360 H.264 (a moving gradient)."""
    y, x = np.mgrid[0:360, 0:640]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        stream.options = {"preset": "ultrafast", "threads": "1"}
        for t in range(frames):
            rgb = np.stack([(x + 8 * t) % 256, (y + 4 * t) % 256, np.full_like(x, 10 * t % 256)],
                           axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


# Prints how much the process's peak RSS rises over its RSS while `run_timeline` goes over
# each video argv[3:] (Linux: writing 5 to clear_refs resets the peak), after a warm-up on
# argv[2]. The model is a stand-in (the softmax of each colour channel's mean): what grows
# with a video's length is on the video's side.
_PEAK_GROWTH = """
import sys
import numpy as np
from tadax.data.config import data_config
from tadax.data.windows import WindowSpec
from tadax.timeline import run_timeline

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def predict(video):
    m = video.mean((1, 2, 3))
    e = np.exp(m - m.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

cfg = data_config(dataset="kinetics400", num_frames=4, test_scale=224, test_crop_size=224)
spec = WindowSpec(window=8, stride=4, num_frames=4)
run_timeline(sys.argv[2], spec, cfg, predict, 1, sys.argv[1] + "/warm")
for i, video in enumerate(sys.argv[3:]):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    run_timeline(video, spec, cfg, predict, 1, f"{sys.argv[1]}/{i}")
    print("growth", status("VmHWM") - before)
"""


def test_timeline_memory_stays_flat_for_a_longer_video(tmp_path):
    """Process RSS (FFmpeg's and TensorFlow's memory included): going over a 360p video 4x
    longer (128 frames, 31 windows) raises the peak by no more than the short one (32
    frames, 7 windows) does, plus 8 MB. Decoding the whole video first, even at the
    eval scale (224 x 398), adds 96 frames x 267 KB = 25 MB; at full size, 66 MB."""
    videos = [_write_360p(tmp_path / f"{name}.mp4", n)
              for name, n in (("warm_up", 2), ("short", 32), ("long", 128))]
    run = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, str(tmp_path / "out"), *videos],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    short, long = [int(line.split()[1]) for line in run.stdout.splitlines()
                   if line.startswith("growth")]
    assert long <= short + (8 << 20), (short, long)
    assert "31 windows of 8 frames" in run.stdout
