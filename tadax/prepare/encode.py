"""One video -> JPEG frames ready for a record (runs in preparation worker processes).

Imports no TensorFlow, so worker processes start fast and stay small.
"""

import dataclasses
import io
import os
from typing import List, Optional

import av
import numpy as np
import simplejpeg
from av.video.reformatter import VideoReformatter
from etils import epath
from PIL import Image

from tadax.prepare.annotations import Entry
from tadax.data.video import RESIZE_INTERPOLATION, VideoDecodeError, read_video, resized_size

# How the stored JPEGs are made, recorded in each split's fingerprint: a change of it
# changes the bytes, so a run is not resumed over shards made the other way.
FRAME_ENCODING = ("jfif 4:2:0 from full-range bt601 planes (swscale area, downscaling only, "
                  "simplejpeg)")


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """How frames are stored: the largest short side in pixels (larger frames are
    downscaled to it, smaller ones kept as decoded; 0: all as decoded), frame rate (0:
    native), JPEG quality, and the rate assumed for JPEG frame folders."""
    short_side: int = 0
    target_fps: float = 0.0
    jpeg_quality: int = 90
    folder_fps: float = 12.0


@dataclasses.dataclass
class Encoded:
    """A video's JPEG frames and context, or `skipped` with the reason. `start_us`/`end_us`
    span the stored frames in the file's own timeline (first frame's timestamp, last
    frame's + 1/fps), whatever the annotation says the clip's times were."""
    entry: Entry
    frames: List[bytes] = dataclasses.field(default_factory=list)
    fps: float = 0.0
    start_us: int = 0
    end_us: int = 0
    skipped: Optional[str] = None


def jpeg_bytes(frame: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes (JFIF, 4:2:0 chroma)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality,
                                  colorspace="RGB", colorsubsampling="420")


def stored_size(width: int, height: int, short_side: int) -> tuple:
    """(width, height) a frame is stored at: a short side above `short_side` is brought
    down to it (even sizes, as `resized_size`); a frame no larger, or `short_side` 0,
    keeps its size. Enlarging would add pixels to encode and store but no detail, and
    training and evaluation resize what they read anyway."""
    if not short_side or min(width, height) <= short_side:
        return width, height
    return resized_size(width, height, short_side)


def _planes(frame: "av.VideoFrame") -> List[np.ndarray]:
    """The planes of a planar 8-bit frame as `(rows, width)` uint8 views (no copy)."""
    return [np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[:, :p.width]
            for p in frame.planes]


def bt601_planes(reformatter: VideoReformatter, frame: "av.VideoFrame",
                 short_side: int) -> "av.VideoFrame":
    """`frame` converted, and downscaled to a short side of at most `short_side`
    (`stored_size`), by one swscale call into full-range BT.601 4:2:0 (`yuvj420p`),
    JPEG's own YCbCr.

    Naming BT.601 as the destination makes swscale convert other matrices (BT.709,
    BT.2020, ...) and RGB, grey or 10-bit sources; the frame's own matrix is what
    `decode_video` converts RGB frames with.
    """
    w, h = stored_size(frame.width, frame.height, short_side)
    # One swscale thread: preparation runs a worker process per core, and slice threads
    # cost more CPU time than they save wall time (~20% more CPU at 1280x720, measured).
    return reformatter.reformat(frame, format="yuvj420p", width=w, height=h,
                                dst_colorspace="ITU601", threads=1,
                                interpolation=RESIZE_INTERPOLATION)


def planes_jpeg(yuv: "av.VideoFrame", quality: int) -> bytes:
    """A `yuvj420p` frame -> JPEG bytes (JFIF, 4:2:0) of its planes as they are: neither
    the encoder's colour conversion nor its chroma downsampling runs."""
    return simplejpeg.encode_jpeg_yuv_planes(*_planes(yuv), quality=quality)


def frame_jpeg(reformatter: VideoReformatter, frame: "av.VideoFrame", short_side: int,
               quality: int) -> bytes:
    """One decoded frame -> JPEG bytes (JFIF, 4:2:0) at `stored_size`, with no RGB frame
    made on the way (README, "Preparation throughput")."""
    return planes_jpeg(bt601_planes(reformatter, frame, short_side), quality)


def _folder_frames(folder: str, opts: EncodeOptions) -> List[bytes]:
    """A folder of JPEG frames (sorted by name) -> JPEG bytes, downscaled to `stored_size`."""
    paths = sorted(p for p in epath.Path(folder).iterdir()
                   if p.suffix in (".jpg", ".jpeg") and p.is_file())
    if not paths:
        raise VideoDecodeError(f"{folder}: no JPEG frames in the folder")
    out = []
    for path in paths:
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                size = stored_size(img.width, img.height, opts.short_side)
                if size != img.size:
                    img = img.convert("RGB").resize(size, Image.BILINEAR)
                    data = jpeg_bytes(np.asarray(img), opts.jpeg_quality)
                else:
                    img.convert("RGB")      # decodes the whole frame: a broken one is refused
        except OSError as e:
            raise VideoDecodeError(f"{path}: unreadable frame ({e})") from e
        out.append(data)
    return out


def encode_entry(entry: Entry, opts: EncodeOptions, decode_threads: int = 0) -> Encoded:
    """Decodes and JPEG-encodes `entry`; a bad file gives `skipped` with the reason, never raises.

    decode_threads: FFmpeg decoding threads (0: FFmpeg's choice). Where a process runs per
    core, 1: FFmpeg's threads then only add CPU time (+35% for decoding a 340x256 clip,
    README, "Preparation throughput"). The frames are the same either way."""
    try:
        if os.path.isdir(entry.path):
            frames = _folder_frames(entry.path, opts)
            fps = opts.folder_fps
            span = (0, int(round(len(frames) / fps * 1e6)))
        else:
            if os.path.getsize(entry.path) == 0:
                return Encoded(entry, skipped="empty file (0 bytes)")
            video = read_video(
                entry.path,
                lambda reformatter, frame: frame_jpeg(reformatter, frame, opts.short_side,
                                                      opts.jpeg_quality),
                target_fps=opts.target_fps, decode_threads=decode_threads)
            frames = video.frames
            fps = video.fps
            span = (video.start_us, video.end_us)
    except (VideoDecodeError, OSError) as e:
        return Encoded(entry, skipped=str(e))
    return Encoded(entry, frames=frames, fps=fps, start_us=span[0], end_us=span[1])
