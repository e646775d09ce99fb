"""Sliding windows over a video file, decoded as a stream.

A window is `window` consecutive frames, counted at the video's own rate or at
`fps` (frames resampled to that rate: each slot of the `fps` grid takes the
decoded frame nearest in time); window k starts at frame k * `stride`. Of a
window's frames the model sees T = `num_frames`: frames
`k * stride + (i * (window - 1)) // (T - 1)`, i < T (the window's first and
last frame and T - 2 evenly between, rounded down, as interval sampling places
a clip; the middle frame when T = 1). Only whole windows are made: frames after
the last whole window belong to none, and a video shorter than one window
gives one window over all of its frames (its last frame repeated). Times are
seconds from the video's first frame: window k spans
`[k stride / fps, (k stride + window) / fps)`.

Decoding streams: only the frames some window uses are converted to RGB
(resized as they are converted), and each is dropped as soon as the windows
that use it are out, so memory holds at most one window's frames whatever the
length of the video. `stream_window_clips` decodes several videos in threads
and hands out their windows as normalised clips; `window_batches` groups them
into padded batches.
"""

import dataclasses
import queue
import threading
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from tadax.data.video import VideoDecodeError, open_video_stream, rgb_frame
from tadax.paths import local_copy


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """Windows of `window` frames every `stride` frames, at `fps` (0: each video's own rate),
    of which the model sees `num_frames`."""
    window: int
    stride: int
    num_frames: int
    fps: float = 0.0

    def check(self) -> None:
        """ValueError naming the flag when the windows cannot be made."""
        if self.window < 1:
            raise ValueError(f"--window {self.window}: must be at least 1 frame")
        if self.stride < 1:
            raise ValueError(f"--stride {self.stride}: must be at least 1 frame")
        if self.fps < 0:
            raise ValueError(f"--fps {self.fps:g}: must be positive (or 0: each video's own rate)")
        if self.window < self.num_frames:
            raise ValueError(f"--window {self.window} is shorter than the {self.num_frames} "
                             "frames the model takes: give at least that many")


def window_spec(data_cfg, num_frames: int, window: Optional[int] = None,
                stride: Optional[int] = None, fps: Optional[float] = None) -> WindowSpec:
    """The windows the flags `--window`, `--stride`, `--fps` ask for, the unset ones from
    the model's recipe: `fps` the recipe's target rate of interval sampling (else each
    video's own rate); `window` the span of a training clip, T x `sampling_rate` frames
    (at the target rate; rescaled to another `--fps`), which segment sampling does not
    fix, so there it must be given; `stride` a quarter of the window."""
    interval = data_cfg.sampling == "interval"
    target = float(data_cfg.target_fps) if interval else 0.0
    rate = float(fps) if fps is not None else target
    if window is None:
        if not interval:
            raise ValueError(
                "--window: this model's clips were sampled by segment (spread over each whole "
                "training video), so its recipe fixes no clip length: give --window in frames "
                "(e.g. 300 for a 10 s Kinetics clip at --fps 30)")
        window = num_frames * data_cfg.sampling_rate
        if target and rate and rate != target:
            window = max(1, int(round(window * rate / target)))
    spec = WindowSpec(int(window), int(stride) if stride is not None else max(1, window // 4),
                      num_frames, rate)
    spec.check()
    return spec


def frame_offsets(window: int, num_frames: int) -> np.ndarray:
    """(T,) int64: the frames a window shows the model, counted from its first frame."""
    if num_frames == 1:
        return np.array([(window - 1) // 2], np.int64)
    return np.array([i * (window - 1) // (num_frames - 1) for i in range(num_frames)], np.int64)


@dataclasses.dataclass
class Window:
    """Window `index` of a video: its `frames` `(T, H, W, 3)` uint8 RGB and the window's
    span `[start, end)` in seconds from the first frame."""
    index: int
    start: float
    end: float
    frames: np.ndarray


def _native_rate(stream: "av.VideoStream") -> float:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else 30.0


def _slots(container, stream, fps: float) -> Iterator[Tuple[int, "av.VideoFrame"]]:
    """(slot, decoded frame) for the frame slots of the video: each decoded frame is a slot
    at `fps` 0; otherwise slot j (time j / fps from the first frame) takes the decoded frame
    nearest in time, until the end of the last frame. A damaged tail ends the video."""
    native = _native_rate(stream)
    if not fps:
        try:
            yield from enumerate(container.decode(stream))
        except (av.error.FFmpegError, ValueError):
            return
        return
    j, first, prev, prev_t = 0, None, None, 0.0
    try:
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else i / native
            first = t if first is None else first
            t -= first
            if prev is not None:
                while j / fps < (prev_t + t) / 2:
                    yield j, prev
                    j += 1
            prev, prev_t = frame, t
    except (av.error.FFmpegError, ValueError):
        pass
    if prev is not None:
        while j / fps < prev_t + 1.0 / native - 1e-9 or j == 0:
            yield j, prev
            j += 1


class WindowStream:
    """The windows of the video file `path` in order (see the module doc), their frames
    resized so that min(H, W) = `short_side` (0 keeps the size). Once iterated, `frames`
    is the number of frames (at `fps`) the video had and `fps` their rate. Iterating
    raises `VideoDecodeError` naming the file if it cannot be opened or holds no frame."""

    def __init__(self, path: str, spec: WindowSpec, short_side: int = 0):
        self.path, self.spec, self.short_side = path, spec, short_side
        self.frames = 0
        self.fps = spec.fps

    def _uses(self, j: int) -> bool:
        """Whether frame slot j is shown to the model by some window."""
        w, s = self.spec.window, self.spec.stride
        for k in range(max(0, -(-(j - w + 1) // s)), j // s + 1):
            if j - k * s in self._offsets:
                return True
        return False

    def __iter__(self) -> Iterator[Window]:
        spec = self.spec
        offsets = frame_offsets(spec.window, spec.num_frames)
        self._offsets = set(offsets.tolist())
        kept: Dict[int, np.ndarray] = {}
        reformatter = VideoReformatter()
        with open_video_stream(self.path) as (container, stream):
            self.fps = fps = spec.fps or _native_rate(stream)
            k, last, converted = 0, None, (None, None)
            for j, frame in _slots(container, stream, spec.fps):
                last = (j, frame)
                if j not in kept and self._uses(j):
                    if converted[0] is not frame:   # slots resampled up share a frame
                        converted = (frame, rgb_frame(reformatter, frame, self.short_side))
                    kept[j] = converted[1]
                if j == k * spec.stride + spec.window - 1:
                    start = k * spec.stride
                    yield Window(k, start / fps, (start + spec.window) / fps,
                                 np.stack([kept[start + o] for o in offsets]))
                    k += 1
                    for old in [i for i in kept if i < k * spec.stride]:
                        del kept[old]
            if last is None:
                raise VideoDecodeError(f"{self.path}: no frames decoded")
            n = last[0] + 1
            self.frames = n
            if k == 0:   # shorter than one window: one window over all of it
                if n - 1 not in kept:
                    kept[n - 1] = rgb_frame(reformatter, last[1], self.short_side)
                yield Window(0, 0.0, n / fps,
                             np.stack([kept[min(int(o), n - 1)] for o in offsets]))


def window_clip(frames: np.ndarray, data_cfg) -> np.ndarray:
    """A window's frames `(T, H, W, 3)` uint8 -> the model's input `(T, S, S, 3)` in
    `data_cfg.dtype`: resized to the short side `test_scale`, the centre
    `test_crop_size` square, normalised, as the evaluation views are."""
    import tensorflow as tf

    from tadax.data import views as views_lib

    resized = views_lib.resize_short_side(tf.constant(frames), data_cfg.test_scale)
    crop = views_lib.spatial_crops(resized, data_cfg.test_crop_size, 1)[0]
    return views_lib.normalize(crop, data_cfg).numpy()


@dataclasses.dataclass
class WindowClip:
    """One window of video `video` as the model's input `clip` `(T, S, S, 3)`."""
    video: int
    index: int
    start: float
    end: float
    clip: np.ndarray


@dataclasses.dataclass
class VideoDone:
    """Every window of video `video` has been handed out: `num_windows` of them, from
    `frames` frames at `fps`."""
    video: int
    num_windows: int
    frames: int
    fps: float


@dataclasses.dataclass
class VideoFailed:
    """Video `video` could not be decoded (`error` names the file and why); windows of it
    handed out before the damage are to be dropped."""
    video: int
    error: str


Item = Union[WindowClip, VideoDone, VideoFailed]


def stream_window_clips(videos: Sequence[Tuple[int, str]], spec: WindowSpec, data_cfg,
                        workers: int = 1, max_pending: int = 16) -> Iterator[Item]:
    """The window clips of `videos` ((id, path) pairs; paths may be gs://), decoded by
    `workers` threads, one video each at a time.

    Yields each video's `WindowClip`s in window order, then its `VideoDone` (or a
    `VideoFailed`); the videos' items interleave. At most `max_pending` clips wait
    to be taken, so memory holds that many clips and one window of frames per worker.
    """
    spec.check()
    out: "queue.Queue" = queue.Queue(maxsize=max_pending)
    todo = iter(list(videos))
    lock, stop = threading.Lock(), threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            while not stop.is_set():
                with lock:
                    video_id, path = next(todo, (None, None))
                if video_id is None:
                    return
                local = str(path)
                try:
                    with local_copy(path) as local:
                        windows = WindowStream(local, spec, data_cfg.test_scale)
                        count = 0
                        for w in windows:
                            if not put(WindowClip(video_id, w.index, w.start, w.end,
                                                  window_clip(w.frames, data_cfg))):
                                return
                            count += 1
                    put(VideoDone(video_id, count, windows.frames, windows.fps))
                except VideoDecodeError as e:
                    put(VideoFailed(video_id, str(e).replace(local, str(path))))
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)
        finally:
            put(None)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(max(1, workers))]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            item = out.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join()


def window_batches(items: Iterator[Item], batch: int
                   ) -> Iterator[Tuple[List[WindowClip], Optional[np.ndarray],
                                       List[Union[VideoDone, VideoFailed]]]]:
    """Groups the clips of `items` into arrays `(batch, T, S, S, 3)` padded with zeros.

    Each yield: (the clips in the array, the array, the videos that ended since the
    previous yield). A video's end comes with the batch holding its last window (or a
    later one), so once that batch is computed all of the video's windows are; the last
    yield may hold no clips (array None) and only ends.
    """
    clips: List[WindowClip] = []
    ends: List[Union[VideoDone, VideoFailed]] = []

    def pack():
        video = np.stack([c.clip for c in clips])
        pad = np.zeros((batch - len(clips),) + video.shape[1:], video.dtype)
        return np.concatenate([video, pad])

    for item in items:
        if isinstance(item, WindowClip):
            clips.append(item)
            if len(clips) == batch:
                yield clips, pack(), ends
                clips, ends = [], []
        else:
            ends.append(item)
    if clips or ends:
        yield clips, pack() if clips else None, ends
