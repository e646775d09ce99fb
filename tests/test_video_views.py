"""`load_views` on a high-resolution video keeps only the frames its views need, at the
eval scale: memory stays at the views' size, never the whole decoded video."""

import tracemalloc

import av
import numpy as np
import pytest

from tadax.data.config import data_config
from tadax.data.video import count_frames, decode_frames, decode_video, load_views

FRAMES, WIDTH, HEIGHT = 24, 1920, 1080


@pytest.fixture(scope="module")
def video_1080p(tmp_path_factory):
    """24 frames of 1080p H.264 (a moving gradient), written frame by frame."""
    path = str(tmp_path_factory.mktemp("hd") / "clip_1080p.mp4")
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "threads": "1"}
        for t in range(FRAMES):
            rgb = np.stack([(x + 8 * t) % 256, (y + 4 * t) % 256, np.full_like(x, 10 * t % 256)],
                           axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_frame_count_without_decoding(video_1080p):
    assert count_frames(video_1080p) == (FRAMES, 25.0)


def test_decode_frames_keeps_only_the_wanted_frames_resized(video_1080p):
    frames = decode_frames(video_1080p, [3, 17, 17, 23], short_side=224)
    assert sorted(frames) == [3, 17, 23]
    assert all(f.shape == (224, 398, 3) for f in frames.values())
    every = decode_video(video_1080p, short_side=224).frames
    for i, f in frames.items():
        np.testing.assert_array_equal(f, every[i])


def test_load_views_memory_stays_at_the_views_size(video_1080p):
    cfg = data_config(dataset="kinetics400", num_frames=8, test_scale=224, test_crop_size=224)
    load_views(video_1080p, cfg, multi_view=False)   # imports TensorFlow outside the trace
    tracemalloc.start()
    try:
        views = load_views(video_1080p, cfg, multi_view=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert views.shape == (12, 8, 224, 224, 3)     # 4 clips x 3 crops
    # The result itself (float32) plus at most FRAMES frames at the eval scale, a few
    # times over for TensorFlow's copies; decoding the video whole takes 149 MB.
    at_eval_scale = FRAMES * 224 * 398 * 3
    assert peak < views.nbytes + 4 * at_eval_scale, peak
