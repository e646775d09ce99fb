"""The tadax side of a benchmark: the recipe's real jitted train step and eval forward.

`TadaxRunner` builds the train state and both steps of a run config once,
compiles them ahead of time (recording compile seconds, XLA's FLOP count
and memory estimate), and then runs either on a fixed random batch.
"""

import time
from typing import Callable, Dict, List, Mapping, Optional

import jax
import ml_collections
import numpy as np

from tadax.models import build_model, layout
from tadax.train.optim import build_optimizer
from tadax.train.sharding import global_batch, make_mesh
from tadax.train.state import abstract_variables, create_train_state, train_state_spec
from tadax.train.steps import eval_variables, make_eval_step, make_train_step


def xla_flops(compiled) -> float:
    """The FLOP count of XLA's cost analysis of a compiled computation (one device's program)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", float("nan")))


def xla_memory_bytes(compiled) -> int:
    """XLA's compile-time peak estimate: arguments + outputs + temporaries - aliased (donated)."""
    mem = compiled.memory_analysis()
    return int(mem.argument_size_in_bytes + mem.output_size_in_bytes
               + mem.temp_size_in_bytes - mem.alias_size_in_bytes)


def device_peak_bytes() -> Optional[int]:
    """The first local device's peak memory in use, where the backend reports it (GPU, TPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def time_runs(fn: Callable[[], None], runs: int) -> List[float]:
    """Seconds of each of `runs` calls of `fn` (which blocks until its result is ready)."""
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


class TadaxRunner:
    """The recipe's train step and eval forward of `config`, compiled, on one random batch.

    batch_per_device: clips per device; the global batch spans every device.
    pretrained: `{'params': ..., 'batch_stats': ...}` numpy trees to start from
    (e.g. converted weights); everything else is the model's own initialisation.
    video: the `(B, T, H, W, 3)` float32 clips to run on (default: random normal).
    """

    def __init__(self, config: ml_collections.ConfigDict, batch_per_device: int,
                 pretrained: Optional[Mapping] = None, video: Optional[np.ndarray] = None,
                 seed: int = 0):
        config = ml_collections.ConfigDict(config.to_dict())
        config.train.global_batch_size = batch_per_device * jax.device_count()
        config.train.grad_accum_steps = 1
        self.config = config
        self.clips = config.train.global_batch_size
        self.mesh = make_mesh(config.mesh)
        self.model = build_model(config.model)
        tx, schedule = build_optimizer(abstract_variables(self.model, config.model)["params"],
                                       config.optimizer, 100, config.train.epochs)
        self.abstract_state, self.shardings = train_state_spec(self.model, tx, config, self.mesh)
        self.train_step = make_train_step(self.model, tx, schedule, config, self.mesh,
                                          self.shardings)
        self.eval_step = make_eval_step(self.model, self.mesh,
                                        eval_variables(self.shardings, use_ema=False))
        if pretrained is not None:   # the importer's unrolled names, in the model's layout
            pretrained = layout.to_layout(pretrained, config.model.scan_layers)
        self._tx, self._pretrained, self._video, self._seed = tx, pretrained, video, seed
        self.state = None
        self.batch = None
        self.compiled: Dict[str, object] = {}
        self.compile_s: Dict[str, float] = {}

    def _host_batch(self) -> Dict[str, np.ndarray]:
        m = self.config.model
        rng = np.random.default_rng(self._seed)
        video = rng.normal(size=(self.clips, m.num_frames, m.image_size, m.image_size, 3))
        return {"video": video.astype(np.float32) if self._video is None else self._video,
                "label": rng.integers(0, m.num_classes, self.clips).astype(np.int32)}

    def compile_train(self, abstract: bool = False):
        """Compiles the train step (from shapes alone with `abstract`: nothing runs)."""
        start = time.perf_counter()
        if abstract:
            m = self.config.model
            video = jax.ShapeDtypeStruct((self.clips, m.num_frames, m.image_size, m.image_size, 3),
                                         np.float32)
            label = jax.ShapeDtypeStruct((self.clips,), np.int32)
            compiled = self.train_step.lower(self.abstract_state,
                                             {"video": video, "label": label}).compile()
        else:
            self._materialise()
            compiled = self.train_step.lower(self.state, self.batch).compile()
        self.compile_s["train"] = time.perf_counter() - start
        self.compiled["train"] = compiled
        return compiled

    def compile_eval(self):
        """Compiles the eval forward (softmax probabilities) on the state's variables."""
        self._materialise()
        start = time.perf_counter()
        compiled = self.eval_step.lower(self.eval_variables(), self.batch["video"]).compile()
        self.compile_s["eval"] = time.perf_counter() - start
        self.compiled["eval"] = compiled
        return compiled

    def _materialise(self) -> None:
        if self.state is None:
            self.state = create_train_state(self.model, self._tx, self.config, self.shardings,
                                            pretrained=self._pretrained)
            self.batch = global_batch(self._host_batch(), self.mesh)

    def eval_variables(self) -> Dict:
        """The current state's `{'params', 'batch_stats'?}`."""
        return eval_variables(self.state, use_ema=False)

    def run_train(self) -> None:
        """One train step (state updated in place), blocking until done."""
        self._materialise()
        compiled = self.compiled.get("train") or self.compile_train()
        self.state, metrics = compiled(self.state, self.batch)
        jax.block_until_ready(metrics)

    def run_eval(self) -> np.ndarray:
        """One eval forward of the batch -> (B, num_classes) probabilities."""
        compiled = self.compiled.get("eval") or self.compile_eval()
        return np.asarray(jax.block_until_ready(compiled(self.eval_variables(),
                                                         self.batch["video"])))
