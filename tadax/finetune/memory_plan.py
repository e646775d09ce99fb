"""bf16, remat and gradient accumulation chosen so that a run's train step fits the device.

The train step of the run config is compiled, never run, and XLA's memory analysis gives
its peak per device (arguments + outputs + temporaries - donated buffers, as
`python -m tadax.bench --mode memory` measures it). Settings are tried from the fastest:
the recipe's float32 without remat, then bfloat16 compute (float32 parameters), then
bfloat16 with remat 'dots' and 'full'; the first whose peak at the whole per-device batch
fits the budget is taken. When none does, the most frugal one splits each step into k
micro-batches (gradient accumulation): k is the smallest divisor of the per-device batch
whose micro-batch fits by the line through the peaks at one clip and at the whole batch
per device (`tadax/bench/memory.py`), confirmed by compiling it (else the next divisor).
A setting the user gave is not chosen: it replaces that part of every step of the ladder.
"""

import dataclasses
import os
from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections

from tadax.bench.memory import GIB, largest_batch, linear_fit
from tadax.errors import ConfigError

LADDER = (("float32", "none"), ("bfloat16", "none"), ("bfloat16", "dots"),
          ("bfloat16", "full"))
HEADROOM = 0.9     # the share of the device's memory a plan may use (XLA's estimate is tight)


@dataclasses.dataclass
class Plan:
    """The chosen settings, the budget, and every (dtype, remat, accumulation, peak) tried."""
    dtype: str
    remat: str
    grad_accum_steps: int
    budget_bytes: float
    tried: List[Tuple[str, str, int, int]]

    def describe(self) -> str:
        """One line: what was chosen and why, in GiB."""
        def gib(b):
            return f"{b / GIB:.3g} GiB"
        chosen = next(t for t in self.tried
                      if t[:3] == (self.dtype, self.remat, self.grad_accum_steps))
        rejected = [f"{d}/remat {r}" + (f"/accum {k}" if k > 1 else "") + f" needs {gib(p)}"
                    for d, r, k, p in self.tried if p > self.budget_bytes]
        return (f"the train step needs {gib(chosen[3])} of a {gib(self.budget_bytes)} "
                "budget" + (f" ({'; '.join(rejected)})" if rejected else ""))


def device_memory(configured_gib: float) -> Tuple[float, str]:
    """(bytes one device may hold, where that number comes from): `configured_gib` if > 0,
    else the device's own limit (GPU, TPU), else the available host memory shared by the
    local devices (CPU)."""
    if configured_gib > 0:
        return configured_gib * GIB, "finetune.device_memory_gib"
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return float(stats["bytes_limit"]), f"{device.device_kind}'s memory"
    share = _available_host_bytes() / jax.local_device_count()
    return share, "the available host memory" + (
        f"'s share of each of {jax.local_device_count()} devices"
        if jax.local_device_count() > 1 else "")


def _available_host_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def train_step_peak(config: ml_collections.ConfigDict) -> int:
    """XLA's peak bytes per device of `config`'s train step (compiled from shapes only)."""
    from tadax.bench.runs import xla_memory_bytes
    from tadax.models import build_model
    from tadax.train.optim import build_optimizer
    from tadax.train.sharding import make_mesh
    from tadax.train.state import abstract_variables, train_state_spec
    from tadax.train.steps import make_train_step

    model = build_model(config.model)
    mesh = make_mesh(config.mesh)
    tx, schedule = build_optimizer(abstract_variables(model, config.model)["params"],
                                   config.optimizer, 100, config.train.epochs)
    state, shardings = train_state_spec(model, tx, config, mesh)
    step = make_train_step(model, tx, schedule, config, mesh, shardings)
    b, size = config.train.global_batch_size, config.data.train_crop_size
    batch = {"video": jax.ShapeDtypeStruct((b, config.model.num_frames, size, size, 3),
                                           jnp.float32),
             "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    return xla_memory_bytes(step.lower(state, batch).compile())


def _with(config, dtype: str, remat: str, accum: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(config.to_dict())
    c.model.dtype, c.model.remat, c.train.grad_accum_steps = dtype, remat, accum
    return c


def plan(config: ml_collections.ConfigDict, budget_bytes: float, *, devices: int,
         min_micro_batch: int = 1, dtype: Optional[str] = None, remat: Optional[str] = None,
         grad_accum_steps: Optional[int] = None,
         estimate: Callable[[ml_collections.ConfigDict], int] = train_step_peak) -> Plan:
    """The fastest settings whose train step fits `budget_bytes` per device.

    devices: the global batch is split over this many. min_micro_batch: clips per device
    a micro-batch must keep (2 with mixup/cutmix). dtype, remat, grad_accum_steps: given
    by the user (not chosen). estimate: peak bytes of a config (default: XLA's).
    Raises ConfigError when even the most frugal setting does not fit.
    """
    ladder = list(dict.fromkeys((dtype or d, remat or r) for d, r in LADDER))
    per_device = config.train.global_batch_size // devices
    tried: List[Tuple[str, str, int, int]] = []

    def fits(d, r, k):
        peak = estimate(_with(config, d, r, k))
        tried.append((d, r, k, peak))
        return peak <= budget_bytes

    first_accum = grad_accum_steps or 1
    for d, r in ladder:
        if fits(d, r, first_accum):
            return Plan(d, r, first_accum, budget_bytes, tried)
    d, r = ladder[-1]
    divisors = [k for k in range(2, per_device + 1)
                if per_device % k == 0 and per_device // k >= min_micro_batch]
    if grad_accum_steps is None and divisors:
        if fits(d, r, divisors[-1]):
            fixed, per_clip = linear_fit((per_device // divisors[-1], per_device),
                                         (tried[-1][3], tried[-2][3]))
            micro = largest_batch(fixed, per_clip, budget_bytes) if per_clip > 0 else per_device
            for k in divisors[:-1]:
                if per_device // k <= micro and fits(d, r, k):
                    return Plan(d, r, k, budget_bytes, tried)
            return Plan(d, r, divisors[-1], budget_bytes, tried)
    smallest = tried[-1]
    raise ConfigError(
        f"the train step does not fit the device: {smallest[3] / GIB:.3g} GiB per device with "
        f"{smallest[0]}, remat {smallest[1]} and {per_device // smallest[2]} clip(s) per "
        f"device per micro-batch, over a budget of {budget_bytes / GIB:.3g} GiB: use more "
        "devices (--config.mesh.fsdp=-1 shards the weights), fewer frames, or a smaller "
        "model")
