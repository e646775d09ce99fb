"""Peak train memory per clip from XLA's compiled memory analysis, and the batch that fits.

The train step is compiled (never run) at two per-device batch sizes; the
peak is taken as linear in the batch, `fixed + slope * batch` (parameters,
optimizer state and workspace in `fixed`, activations in `slope`), and the
largest batch that fits a device of C bytes is `floor((C - fixed) / slope)`.
"""

import math
from typing import Dict, Sequence, Tuple

GIB = 2 ** 30
CAPACITIES_GIB: Tuple[int, ...] = (16, 32, 80, 141)


def linear_fit(batches: Tuple[int, int], peaks: Tuple[int, int]) -> Tuple[float, float]:
    """(fixed bytes, bytes per clip) of the line through the two (batch, peak bytes) points."""
    (b1, b2), (m1, m2) = batches, peaks
    if b2 == b1:
        raise ValueError("two different batch sizes are needed")
    slope = (m2 - m1) / (b2 - b1)
    return m1 - slope * b1, slope


def largest_batch(fixed: float, per_clip: float, capacity_bytes: float) -> int:
    """The largest per-device batch whose extrapolated peak fits `capacity_bytes` (0 if none)."""
    if per_clip <= 0:
        raise ValueError(f"memory must grow with the batch, got {per_clip} bytes per clip")
    return max(0, math.floor((capacity_bytes - fixed) / per_clip))


def fit_row(batches: Tuple[int, int], peaks: Tuple[int, int],
            capacities_gib: Sequence[int] = CAPACITIES_GIB) -> Dict[str, object]:
    """Peak at the smaller batch, fixed and per-clip GiB, and the batch fitting each capacity."""
    fixed, per_clip = linear_fit(batches, peaks)
    return {"peak_gib": peaks[0] / GIB, "fixed_gib": fixed / GIB, "per_clip_gib": per_clip / GIB,
            "fits": [largest_batch(fixed, per_clip, c * GIB) for c in capacities_gib]}
