"""Train-step benchmark: clips/s, peak memory, XLA FLOPs and the fraction of this
machine's measured matmul rate, for each named model of the recipes.

  python -m tadax.train.bench                       # all recipes, batch 1, 16 frames
  python -m tadax.train.bench --batch 8 --models tadaformer_b16 tadaconvnextv2_tiny

Runs the real train step (AdamW with the recipe's parameter groups, label
smoothing, dropout, drop path, donated state) on every local device (the
batch is per device); the same command works on CPU, GPU and TPU. Memory is
the device's peak where the backend reports it (GPU/TPU), else XLA's
compile-time estimate (arguments + outputs + temporaries, CPU).
"""

import argparse
import importlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from tadax.models import build_model
from tadax.models.repeat import REMAT_POLICIES
from tadax.train.optim import build_optimizer
from tadax.train.sharding import global_batch, make_mesh
from tadax.train.state import abstract_variables, create_train_state, train_state_spec
from tadax.train.steps import make_train_step

RECIPES = {"tadaformer_b16": "tadaformer_b16", "tadaformer_l14": "tadaformer_l14",
           "tadaconvnextv2_tiny": "tadaconvnextv2_tiny",
           "tadaconvnextv2_small": "tadaconvnextv2_small",
           "tadaconvnextv2_base": "tadaconvnextv2_base"}


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """This device's float32 matmul rate in FLOP/s (2 n^3 per n x n product), best of repeats."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def bench_model(name: str, batch_per_device: int, frames: int, steps: int, dtype: str,
                remat: str, scan_layers: bool) -> dict:
    """Times `steps` train steps after a warm-up one; returns the measurements."""
    config = importlib.import_module(f"configs.{RECIPES[name]}").get_config(f"frames={frames}")
    config.model.dtype = dtype
    config.model.remat = remat
    config.model.scan_layers = scan_layers
    config.train.global_batch_size = batch_per_device * jax.device_count()
    mesh = make_mesh(config.mesh)
    model = build_model(config.model)
    tx, schedule = build_optimizer(abstract_variables(model, config.model)["params"],
                                   config.optimizer, 100, config.train.epochs)
    _, shardings = train_state_spec(model, tx, config, mesh)
    state = create_train_state(model, tx, config, shardings)
    step = make_train_step(model, tx, schedule, config, mesh, shardings)
    size = config.model.image_size
    rng = np.random.default_rng(0)
    batch = global_batch({
        "video": rng.normal(size=(config.train.global_batch_size, frames, size, size, 3)
                            ).astype(np.float32),
        "label": rng.integers(0, config.model.num_classes,
                              config.train.global_batch_size).astype(np.int32)}, mesh)
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t) / steps
    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        memory, source = stats["peak_bytes_in_use"], "device peak"
    else:
        mem = compiled.memory_analysis()
        memory = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                  + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
        source = "XLA estimate"
    return {"model": name, "clips_per_step": config.train.global_batch_size,
            "step_s": step_s, "clips_per_s": config.train.global_batch_size / step_s,
            "clips_per_s_per_device": batch_per_device / step_s,
            "gflop_per_step": flops / 1e9, "achieved_gflop_s": flops / step_s / 1e9,
            "memory_gib": memory / 2 ** 30, "memory_source": source,
            "compile_s": compile_s, "loss": float(metrics["loss"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--batch", type=int, default=1, help="clips per device")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", default="none", choices=list(REMAT_POLICIES),
                        help="rematerialisation policy of a block")
    parser.add_argument("--scan-layers", action="store_true",
                        help="scan over the blocks (stacked layout)")
    args = parser.parse_args()
    rate = matmul_rate()
    print(f"{jax.device_count()} x {jax.devices()[0].device_kind}; measured float32 matmul "
          f"rate {rate / 1e9:.1f} GFLOP/s per device; batch {args.batch} per device, "
          f"{args.frames} frames, {args.dtype}, remat {args.remat}"
          f"{', scanned blocks' if args.scan_layers else ''}", flush=True)
    print("| model | s / step | clips/s | clips/s/device | XLA GFLOP / step | GFLOP/s "
          "| of matmul rate | memory GiB | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = bench_model(name, args.batch, args.frames, args.steps, args.dtype, args.remat,
                        args.scan_layers)
        fraction = r["achieved_gflop_s"] * 1e9 / (rate * jax.device_count())
        print(f"| {name} | {r['step_s']:.2f} | {r['clips_per_s']:.3f} | "
              f"{r['clips_per_s_per_device']:.3f} | {r['gflop_per_step']:.0f} | "
              f"{r['achieved_gflop_s']:.0f} | {fraction:.0%} | {r['memory_gib']:.2f} "
              f"({r['memory_source']}) | {r['compile_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
