"""`load_views` on a high-resolution video keeps only the frames its views need, at the
eval scale: memory stays at the views' size, never the whole decoded video."""

import subprocess
import sys

import av
import numpy as np
import pytest

from tadax.data.config import data_config
from tadax.data.video import count_frames, decode_frames, decode_video, load_views

FRAMES, WIDTH, HEIGHT = 24, 1920, 1080


def _write_1080p(path, frames):
    """`frames` frames of 1080p H.264 (a moving gradient), written frame by frame."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "threads": "1"}
        for t in range(frames):
            rgb = np.stack([(x + 8 * t) % 256, (y + 4 * t) % 256, np.full_like(x, 10 * t % 256)],
                           axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def video_1080p(tmp_path_factory):
    return _write_1080p(str(tmp_path_factory.mktemp("hd") / "clip_1080p.mp4"), FRAMES)


def test_frame_count_without_decoding(video_1080p):
    assert count_frames(video_1080p) == (FRAMES, 25.0)


def test_decode_frames_keeps_only_the_wanted_frames_resized(video_1080p):
    frames = decode_frames(video_1080p, [3, 17, 17, 23], short_side=224)
    assert sorted(frames) == [3, 17, 23]
    assert all(f.shape == (224, 398, 3) for f in frames.values())
    every = decode_video(video_1080p, short_side=224).frames
    for i, f in frames.items():
        np.testing.assert_array_equal(f, every[i])


# Prints how much a process's peak resident memory grows while `load_views` reads the
# video argv[1] (the libraries and FFmpeg's 1080p decoder warmed up first on argv[2]).
_PEAK_GROWTH = """
import resource, sys
from tadax.data.config import data_config
from tadax.data.video import load_views
cfg = data_config(dataset="kinetics400", num_frames=8, test_scale=224, test_crop_size=224)
load_views(sys.argv[2], cfg, multi_view=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
views = load_views(sys.argv[1], cfg, multi_view=False)
assert views.shape == (1, 8, 224, 224, 3)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_load_views_memory_stays_flat_for_a_longer_video(video_1080p, tmp_path):
    """Process RSS (FFmpeg's and TensorFlow's memory included, which tracemalloc does not
    see): reading the centre view of a 1080p video 4x longer raises the peak by no more
    than the short one does, plus 8 MB. Decoding the whole video first (even resized to
    the eval scale) adds 72 frames x 267 KB = 19 MB; at full size, 450 MB."""
    long_video = _write_1080p(str(tmp_path / "long_1080p.mp4"), 4 * FRAMES)
    warm_up = _write_1080p(str(tmp_path / "warm_up_1080p.mp4"), 2)
    growth = []
    for video in (video_1080p, long_video):
        run = subprocess.run([sys.executable, "-c", _PEAK_GROWTH, video, warm_up],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        growth.append(int(run.stdout.split()[-1]))
    assert growth[1] <= growth[0] + (8 << 20), growth
