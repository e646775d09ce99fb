"""Reading video files with PyAV, and the evaluation views of one file.

`read_video` decodes a file and converts each kept frame as it comes (dataset
preparation turns them into JPEGs, `tadax.prepare.encode`); `decode_video` gives
them as RGB arrays; `load_views` gives the evaluation views of one file exactly
as the TFRecord eval pipeline builds them. `open_video_stream` and `rgb_frame`
are the pieces for other streaming readers (`tadax.data.windows`).
"""

import contextlib
import dataclasses
from typing import Any, Callable, Dict, Iterator, Sequence, Tuple

import av
import numpy as np
from av.video.reformatter import VideoReformatter


# One swscale call converts (and resizes) each frame. Resizing, planar RGB ('gbrp'; PyAV
# returns it as (H, W, 3) RGB) takes swscale's vectorised planar output: about twice as
# fast as packed 'rgb24', whose resizing path is per pixel, and closer to an
# RGB-then-resize reference (README, "Preparation throughput"). Without a resize, 'rgb24'
# has the exact fast converter, and unscaled 'gbrp' is off by up to ~13 grey levels at
# widths such as 56 or 120.
_RESIZE_FORMAT = "gbrp"
_NATIVE_FORMAT = "rgb24"
# swscale's area filter: for downscaling (720p to a 320 short side) ~35% less CPU than its
# bilinear filter and as close to a Lanczos-resized RGB reference; for upscaling it is
# the bilinear filter (README, "Preparation throughput").
RESIZE_INTERPOLATION = "AREA"


class VideoDecodeError(ValueError):
    """A video file could not be decoded into frames; the message names the file and why."""


@dataclasses.dataclass
class DecodedVideo:
    """The kept frames of a video, their rate, and their span in the file's own timeline
    (first frame's timestamp, last frame's + 1/fps). `frames`: `(N, H, W, 3)` uint8 RGB
    from `decode_video`, the list of what `convert` returned from `read_video`."""
    frames: Any
    fps: float
    start_us: int
    end_us: int


def resized_size(width: int, height: int, short_side: int) -> tuple:
    """(width, height) with the short side at `short_side` (even sizes); unchanged if 0."""
    if not short_side:
        return width, height
    if width <= height:
        new_w = short_side
        new_h = int(round(height * short_side / width))
    else:
        new_h = short_side
        new_w = int(round(width * short_side / height))
    return max(2, new_w - new_w % 2), max(2, new_h - new_h % 2)


def rgb_frame(reformatter: VideoReformatter, frame: "av.VideoFrame", short_side: int) -> np.ndarray:
    """`frame` as `(H, W, 3)` uint8 RGB, resized so that min(H, W) = short_side (0 keeps
    the size), in one swscale call."""
    w, h = resized_size(frame.width, frame.height, short_side)
    native = (w, h) == (frame.width, frame.height)
    return reformatter.reformat(frame, format=_NATIVE_FORMAT if native else _RESIZE_FORMAT,
                                width=w, height=h,
                                interpolation=RESIZE_INTERPOLATION).to_ndarray()


@contextlib.contextmanager
def open_video_stream(path: str) -> Iterator[Tuple["av.container.InputContainer", "av.VideoStream"]]:
    """(open container, its first video stream) of `path`; `VideoDecodeError` naming the
    file when it cannot be opened or holds no video."""
    try:
        container = av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise VideoDecodeError(f"{path}: cannot open ({type(e).__name__}: {e})") from e
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        yield container, container.streams.video[0]


def read_video(path: str, convert: Callable[[VideoReformatter, "av.VideoFrame"], Any], *,
               target_fps: float = 0.0, decode_threads: int = 0) -> DecodedVideo:
    """Decodes `path` and returns `convert(reformatter, frame)` of every kept frame.

    target_fps: keep the frames nearest to a `target_fps` grid (0 keeps all
        frames at the native rate); never raises the rate above the native one.
    decode_threads: FFmpeg decoding threads (0: FFmpeg's choice, a thread per core).
    `convert` is called as each frame is decoded, with one swscale context per
    video, so memory holds what it returns, not decoded pictures. A truncated
    tail keeps the frames decoded before the damage. Raises `VideoDecodeError`
    naming the file for unreadable, corrupt or empty videos.
    """
    with open_video_stream(path) as (container, stream):
        stream.codec_context.thread_count = decode_threads
        rate = stream.average_rate or stream.guessed_rate
        native_fps = float(rate) if rate else 0.0
        fps = native_fps if not target_fps or not native_fps else min(target_fps, native_fps)
        frames, times = [], []
        next_slot = 0.0
        reformatter = VideoReformatter()    # one conversion context per video, not per frame
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(times) / (native_fps or 30.0)
                if target_fps and native_fps and fps < native_fps:
                    if t + 0.5 / native_fps < next_slot:
                        continue
                    next_slot += 1.0 / fps
                frames.append(convert(reformatter, frame))
                times.append(t)
        except (av.error.FFmpegError, ValueError) as e:
            if not frames:
                raise VideoDecodeError(f"{path}: corrupt ({type(e).__name__}: {e})") from e
    if not frames:
        raise VideoDecodeError(f"{path}: no frames decoded")
    if not fps:
        fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 30.0
    end = times[-1] + 1.0 / fps
    return DecodedVideo(frames=frames, fps=float(fps), start_us=int(round(times[0] * 1e6)),
                        end_us=int(round(end * 1e6)))


def decode_video(path: str, *, short_side: int = 0, target_fps: float = 0.0) -> DecodedVideo:
    """Decodes `path` -> `DecodedVideo` with frames `(N, H, W, 3)` uint8 RGB.

    short_side: resize so that min(H, W) = short_side (0 keeps the size).
    target_fps: as in `read_video`.
    Raises `VideoDecodeError` naming the file for unreadable, corrupt or empty videos.
    """
    video = read_video(path, lambda reformatter, frame: rgb_frame(reformatter, frame, short_side),
                       target_fps=target_fps)
    return dataclasses.replace(video, frames=np.stack(video.frames))


def count_frames(path: str) -> Tuple[int, float]:
    """(number of video frames, native frame rate) of `path`, read from the packets
    without decoding any picture. Raises `VideoDecodeError` naming the file."""
    with open_video_stream(path) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate
        try:
            count = sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{path}: corrupt ({type(e).__name__}: {e})") from e
    if not count:
        raise VideoDecodeError(f"{path}: no frames")
    return count, float(rate) if rate else 30.0


def decode_frames(path: str, indices: Sequence[int], short_side: int = 0) -> Dict[int, np.ndarray]:
    """The frames at `indices` (decode order, 0-based) -> {index: (H, W, 3) uint8 RGB}.

    Every frame is decoded (inter-frame codecs need it), but only the wanted
    ones are converted to RGB, each resized as it is converted so that
    min(H, W) = short_side (0 keeps the size): memory holds the wanted frames at
    the wanted size, never the whole video. Indices past a truncated end get the
    last frame decoded.
    """
    wanted = set(int(i) for i in indices)
    out: Dict[int, np.ndarray] = {}
    with open_video_stream(path) as (container, stream):
        reformatter = VideoReformatter()
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i > max(wanted):
                    break
                if i in wanted:
                    out[i] = rgb_frame(reformatter, frame, short_side)
        except (av.error.FFmpegError, ValueError) as e:
            if not out:
                raise VideoDecodeError(f"{path}: corrupt ({type(e).__name__}: {e})") from e
    if not out:
        raise VideoDecodeError(f"{path}: no frames decoded")
    fill = out[max(out)]
    return {i: out.get(i, fill) for i in sorted(wanted)}


def load_views(path: str, data_cfg, *, multi_view: bool = True) -> np.ndarray:
    """The evaluation views of one video file -> `(V, T, H, W, 3)` normalised, `data_cfg.dtype`.

    V = num_clips x num_crops (clip-major) when `multi_view`, else 1 (the centre
    view). The views' frame indices come from the frame count and rate (read
    from the packets), then only those frames are kept, resized to the short
    side `data_cfg.test_scale` as they are decoded; they go through the same
    sampling, cropping and normalisation as the TFRecord eval pipeline.
    """
    import tensorflow as tf

    from tadax.data import sampling, views as views_lib

    num_total, fps = count_frames(path)
    num_clips = data_cfg.num_clips if multi_view else 1
    wanted = np.concatenate([sampling.clip_indices(data_cfg, num_total, fps, clip_idx=k,
                                                   num_clips=num_clips).numpy()
                             for k in range(num_clips)])
    decoded = decode_frames(path, wanted, short_side=data_cfg.test_scale)
    order = sorted(decoded)
    frames = tf.constant(np.stack([decoded[i] for i in order]))
    position = tf.constant(np.searchsorted(order, np.arange(num_total)).clip(0, len(order) - 1),
                           tf.int32)

    def get_frames(indices):
        return tf.gather(frames, tf.gather(position, indices))

    clips = views_lib.eval_views(get_frames, num_total, tf.constant(fps, tf.float32),
                                 data_cfg, multi_view=multi_view)
    return views_lib.normalize(clips, data_cfg).numpy()
