"""Peak bf16 rates of current accelerators by JAX `device_kind`, and model FLOP utilisation.

MFU = (XLA's FLOP count of one device's compiled train step / seconds per
step) / that device's peak dense bf16 FLOP/s.
"""

import re
from typing import Optional, Sequence, Tuple

# (device_kind pattern, name, peak dense bf16 FLOP/s per chip). First match wins.
PEAK_BF16: Sequence[Tuple[str, str, float]] = (
    # Google Cloud TPU system architecture pages, per chip:
    # cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16.
    (r"^tpu v4", "TPU v4", 275e12),
    # cloud.google.com/tpu/docs/v5e ("TPU v5 lite" in JAX): 197 TFLOP/s bf16.
    (r"^tpu v5 ?(lite|e)", "TPU v5e", 197e12),
    # cloud.google.com/tpu/docs/v5p ("TPU v5" in JAX): 459 TFLOP/s bf16.
    (r"^tpu v5( ?p)?$", "TPU v5p", 459e12),
    # cloud.google.com/tpu/docs/v6e ("TPU v6 lite" in JAX): 918 TFLOP/s bf16.
    (r"^tpu v6 ?(lite|e)", "TPU v6e", 918e12),
    # NVIDIA data sheets, dense (half the figure quoted "with sparsity"):
    # A100 Tensor Core GPU data sheet: BF16 312 TFLOP/s.
    (r"a100", "NVIDIA A100", 312e12),
    # H100 data sheet: BF16 1979 TFLOP/s sparse on SXM, 1513 on PCIe.
    (r"h100.*pcie", "NVIDIA H100 PCIe", 756e12),
    (r"h100", "NVIDIA H100 SXM", 989e12),
    # H200 data sheet: BF16 1979 TFLOP/s sparse (SXM).
    (r"h200", "NVIDIA H200", 989e12),
    # HGX B200 data sheet: FP16/BF16 4.5 PFLOP/s sparse per GPU.
    (r"b200", "NVIDIA B200", 2250e12),
)


def peak_bf16(device_kind: str) -> Optional[Tuple[str, float]]:
    """(name, peak dense bf16 FLOP/s) of a `jax.Device.device_kind`, or None if unknown."""
    kind = device_kind.strip().lower()
    for pattern, name, peak in PEAK_BF16:
        if re.search(pattern, kind):
            return name, peak
    return None


def mfu(flops_per_step: float, step_s: float, device_kind: str) -> Optional[float]:
    """Model FLOP utilisation of one device, or None for a device kind without a known peak."""
    peak = peak_bf16(device_kind)
    if peak is None:
        return None
    return flops_per_step / step_s / peak[1]
