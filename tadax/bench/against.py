"""tadax against the original PyTorch code, side by side on this machine.

For each model: the original builds it from its own settings file, with
random weights; tadax imports those weights through the importer that
`python -m tadax.convert zoo` uses (the state dict in memory), the eval
outputs are checked to agree, and then eval forward and train step are timed
alternately (which side goes first alternates per round), in rounds of runs.
"""

import os
import sys
from typing import Any, Dict, Iterable, List, Mapping, Tuple

import numpy as np

from tadax import convert
from tadax.bench import original as upstream
from tadax.bench.recipes import BenchError, apply_overrides, recipe_config
from tadax.bench.runs import TadaxRunner, time_runs
from tadax.bench.table import min_median
from tadax.models.registry import upstream_fields
from tadax.weights import mapping
from tadax.weights.infer import infer_model_config

HEADERS = ("model", "phase", "round", "original min / median", "tadax min / median",
           "original / tadax (medians)")
PHASES = ("eval forward", "train step")


def torch_threads() -> int:
    """Sets torch's intra-op threads to the cores JAX's CPU backend uses (this process's
    CPU affinity) and returns that count."""
    import torch
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    return cores


# TAdaFormer-B/16's matmuls at 16 frames, batch 1 (8 token frames of 197 tokens, width 768,
# 12 heads of 64): the MLP's dense product, and the attention's batched logits product.
DENSE_SHAPE = (1576, 768, 3072)
BATCHED_SHAPE = (96, 197, 64)


def matmul_rates(runs: int = 30) -> Dict[str, float]:
    """Float32 GFLOP/s (best of `runs`) of XLA and torch, on the threads this comparison
    gives each, at B/16's two kinds of matmul: `dense`, `(M, K) @ (K, N)` of DENSE_SHAPE,
    and `batched`, the attention logits `q @ k^T` with q and k `(B, L, d)` of
    BATCHED_SHAPE. A matmul-bound step's original / tadax ratio follows these two
    libraries' rates on the machine.
    Keys: 'xla dense', 'torch dense', 'xla batched', 'torch batched'."""
    import jax
    import jax.numpy as jnp
    import torch

    rng = np.random.default_rng(0)
    m, k, n = DENSE_SHAPE
    b, length, d = BATCHED_SHAPE
    x, w = rng.random((m, k), np.float32), rng.random((k, n), np.float32)
    q, keys = rng.random((2, b, length, d), np.float32)
    xla_dense = jax.jit(lambda x, w: x @ w)
    xla_logits = jax.jit(lambda q, k: q @ jnp.swapaxes(k, 1, 2))
    jx, jw, jq, jk = jax.device_put((x, w, q, keys))
    tx, tw, tq, tk = (torch.from_numpy(a) for a in (x, w, q, keys))
    calls = {"xla dense": (lambda: xla_dense(jx, jw).block_until_ready(), 2 * m * k * n),
             "torch dense": (lambda: tx @ tw, 2 * m * k * n),
             "xla batched": (lambda: xla_logits(jq, jk).block_until_ready(),
                             2 * b * length * length * d),
             "torch batched": (lambda: tq @ tk.transpose(1, 2), 2 * b * length * length * d)}
    rates = {}
    for key, (call, flops) in calls.items():
        call()
        rates[key] = flops / min(time_runs(call, runs)) / 1e9
    return rates


def matmul_rates_line(rates: Mapping[str, float]) -> str:
    """One line of `matmul_rates`' figures for the benchmark's header."""
    (m, k, n), (b, length, d) = DENSE_SHAPE, BATCHED_SHAPE
    return (f"float32 matmul here, GFLOP/s: dense {m}x{k} @ {k}x{n} XLA "
            f"{rates['xla dense']:.0f}, torch {rates['torch dense']:.0f}; batched {b} x "
            f"{length}x{d} @ {d}x{length} XLA {rates['xla batched']:.0f}, torch "
            f"{rates['torch batched']:.0f} (B/16's MLP and attention logits products)")


def log_prob_difference(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """max |log p_a - log p_b| of two (B, classes) probability arrays (logits up to a shift)."""
    tiny = np.finfo(np.float32).tiny
    return float(np.max(np.abs(np.log(np.maximum(probs_a, tiny))
                               - np.log(np.maximum(probs_b, tiny)))))


def build_pair(path: str, settings_file: str, original_overrides: Mapping[str, Any],
               tadax_overrides: Iterable[Tuple[str, object]], batch: int, seed: int,
               scale: float) -> Tuple[upstream.OriginalRunner, TadaxRunner]:
    """The original model with random weights and tadax with those weights imported.

    Both run on the same `(batch, T, S, S, 3)` clips (T = DATA.NUM_INPUT_FRAMES,
    S = DATA.TRAIN_CROP_SIZE of the resolved settings: the train step's input, 224 for
    the zoo; ConvNeXt's K400 files evaluate at a 256 crop, which would time eval and train
    on different inputs) and labels.
    """
    handles, notes = upstream.import_original(path)
    for note in notes:
        print(note, file=sys.stderr)
    settings = upstream.resolve_settings(path, settings_file, original_overrides)
    frames, crop = settings["DATA.NUM_INPUT_FRAMES"], settings["DATA.TRAIN_CROP_SIZE"]
    rng = np.random.default_rng(seed)
    video = rng.normal(size=(batch, frames, crop, crop, 3)).astype(np.float32)
    labels = rng.integers(0, settings["VIDEO.HEAD.NUM_CLASSES"], batch).astype(np.int32)
    original = upstream.OriginalRunner(handles, settings, video, labels, seed, scale)

    state_dict = mapping.strip_prefix(upstream.state_dict_numpy(original.model))
    try:
        _, given = upstream_fields(settings)
        model_cfg = infer_model_config(state_dict, **dict(given, image_size=crop))
    except ValueError as e:
        raise BenchError(f"{settings_file}: {e}") from None
    variables = convert.convert_zoo(state_dict, model_cfg, f"{settings_file} (random weights)")
    config = recipe_config(model_cfg.arch)
    config.model = model_cfg
    apply_overrides(config, tadax_overrides)
    return original, TadaxRunner(config, batch, pretrained=variables, video=video, seed=seed)


def check_agreement(original: upstream.OriginalRunner, tadax: TadaxRunner, name: str,
                    tolerance: float) -> float:
    """max |log p| difference of the two eval outputs; a BenchError beyond `tolerance`."""
    probs_original, _ = original.eval_outputs()
    difference = log_prob_difference(tadax.run_eval(), probs_original)
    if not difference <= tolerance:
        raise BenchError(f"{name}: eval outputs disagree: max |log p| difference "
                         f"{difference:.3g} > tolerance {tolerance:g}")
    return difference


def time_alternating(original_fn, tadax_fn, rounds: int, runs: int) -> List[Tuple[str, str, str]]:
    """Per round: (original min / median, tadax min / median, ratio of medians); one warm-up
    call of each first; the side that goes first alternates between rounds."""
    original_fn()
    tadax_fn()
    rows = []
    for r in range(rounds):
        if r % 2 == 0:
            t_tadax, t_original = time_runs(tadax_fn, runs), time_runs(original_fn, runs)
        else:
            t_original, t_tadax = time_runs(original_fn, runs), time_runs(tadax_fn, runs)
        ratio = float(np.median(t_original) / np.median(t_tadax))
        rows.append((min_median(t_original), min_median(t_tadax), f"{ratio:.2f}x"))
    return rows


def compare(path: str, name: str, settings_file: str, original_overrides: Mapping[str, Any],
            tadax_overrides: Iterable[Tuple[str, object]], batch: int, rounds: int, runs: int,
            tolerance: float, seed: int = 0, scale: float = 0.02) -> List[Tuple]:
    """Rows of the comparison table for one model (see HEADERS); prints the agreement line."""
    original, tadax = build_pair(path, settings_file, original_overrides, tadax_overrides,
                                 batch, seed, scale)
    difference = check_agreement(original, tadax, name, tolerance)
    print(f"{name}: eval outputs agree, max |log p| difference {difference:.2e} "
          f"(tolerance {tolerance:g})", flush=True)
    rows = []
    for phase, fns in zip(PHASES, ((original.run_eval, tadax.run_eval),
                                   (original.run_train, tadax.run_train))):
        for r, cells in enumerate(time_alternating(*fns, rounds, runs), 1):
            rows.append((name, phase, r) + cells)
    return rows
