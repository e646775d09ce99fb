"""One status line for long work over videos: how far, how fast, and when it ends."""

import sys
import time
from typing import Optional


def clock(seconds: float) -> str:
    """`h:mm:ss`."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """`done/total UNIT, x UNIT/s[, y clips/s], ETA h:mm:ss`, rewritten in place on `stream`.

    `update(done, clips)` takes the totals so far (clips: None when they are the
    units). The ETA follows the clip rate when the total number of clips is known
    (`total_clips`), else the rate of `unit`s; it is `?` until there is a rate.
    """

    def __init__(self, total: int, unit: str = "videos", total_clips: Optional[int] = None,
                 stream=sys.stderr):
        self.total, self.unit, self.total_clips, self.stream = total, unit, total_clips, stream
        self.start = time.time()

    def update(self, done: float, clips: Optional[int] = None) -> None:
        elapsed = max(time.time() - self.start, 1e-9)
        rate, clip_rate = done / elapsed, (clips or 0) / elapsed
        if self.total_clips is not None and clip_rate > 0:
            eta = clock(max(self.total_clips - clips, 0) / clip_rate)
        elif rate > 0:
            eta = clock(max(self.total - done, 0) / rate)
        else:
            eta = "?"
        clip_part = "" if clips is None else f"{clip_rate:.1f} clips/s, "
        print(f"\r{int(done)}/{self.total} {self.unit}, {rate:.2f} {self.unit}/s, {clip_part}"
              f"ETA {eta}", end="", file=self.stream, flush=True)

    def close(self) -> None:
        print(file=self.stream, flush=True)
