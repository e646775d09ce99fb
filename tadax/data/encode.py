"""One video -> JPEG frames ready for a record (runs in preparation worker processes).

Imports no TensorFlow, so worker processes start fast and stay small.
"""

import dataclasses
import io
import os
from typing import List, Optional

import numpy as np
from etils import epath
from PIL import Image

from tadax.data.annotations import Entry
from tadax.data.video import VideoDecodeError, resized_size, decode_video


@dataclasses.dataclass(frozen=True)
class EncodeOptions:
    """How frames are stored: short side in pixels (0: as decoded), frame rate (0: native),
    JPEG quality, and the rate assumed for JPEG frame folders."""
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
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _folder_frames(folder: str, opts: EncodeOptions) -> List[bytes]:
    """A folder of JPEG frames (sorted by name) -> JPEG bytes, resized if asked."""
    paths = sorted(p for p in epath.Path(folder).iterdir()
                   if p.suffix in (".jpg", ".jpeg") and p.is_file())
    if not paths:
        raise VideoDecodeError(f"{folder}: no JPEG frames in the folder")
    out = []
    for path in paths:
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as img:
                if opts.short_side and min(img.size) != opts.short_side:
                    img = img.convert("RGB").resize(
                        resized_size(img.width, img.height, opts.short_side), Image.BILINEAR)
                    data = jpeg_bytes(np.asarray(img), opts.jpeg_quality)
                else:
                    img.convert("RGB")      # decodes the whole frame: a broken one is refused
        except OSError as e:
            raise VideoDecodeError(f"{path}: unreadable frame ({e})") from e
        out.append(data)
    return out


def encode_entry(entry: Entry, opts: EncodeOptions) -> Encoded:
    """Decodes and JPEG-encodes `entry`; a bad file gives `skipped` with the reason, never raises."""
    try:
        if os.path.isdir(entry.path):
            frames = _folder_frames(entry.path, opts)
            fps = opts.folder_fps
            span = (0, int(round(len(frames) / fps * 1e6)))
        else:
            if os.path.getsize(entry.path) == 0:
                return Encoded(entry, skipped="empty file (0 bytes)")
            video = decode_video(entry.path, short_side=opts.short_side,
                                 target_fps=opts.target_fps)
            frames = [jpeg_bytes(f, opts.jpeg_quality) for f in video.frames]
            fps = video.fps
            span = (video.start_us, video.end_us)
    except (VideoDecodeError, OSError) as e:
        return Encoded(entry, skipped=str(e))
    return Encoded(entry, frames=frames, fps=fps, start_us=span[0], end_us=span[1])


def encode_task(args: "tuple[Entry, EncodeOptions]") -> Encoded:
    """`encode_entry` for `Pool.imap`."""
    return encode_entry(*args)
