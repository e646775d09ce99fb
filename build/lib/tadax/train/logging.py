"""Run logs: a progress line per log period, metrics history (JSON lines) and TensorBoard.

Only the lead host (process 0) writes files; every host prints nothing but
what the lead prints. The history file `WORKDIR/metrics.jsonl` survives
restarts (a resumed run appends to it, dropping entries past its step), so the
curves of an interrupted run are whole.
"""

import datetime
import json
import os
import time
from typing import Dict, List, Mapping

import jax


class MetricLogger:
    """Log lines, `metrics.jsonl` and TensorBoard events for one run.

    total_steps: last step of the run; start_step: where this process started;
    clips_per_step: the global batch.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int, clips_per_step: int):
        self.lead = jax.process_index() == 0
        self.total_steps = total_steps
        self.clips_per_step = clips_per_step
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._last_time, self._last_step = time.time(), start_step
        self.writer = None
        if self.lead:
            os.makedirs(workdir, exist_ok=True)
            self._truncate(start_step)
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def _truncate(self, start_step: int) -> None:
        """Drops history entries after `start_step` (written by a run killed before its save)."""
        if not os.path.exists(self.path):
            return
        kept = [line for line in open(self.path) if json.loads(line)["step"] <= start_step]
        with open(self.path, "w") as f:
            f.writelines(kept)

    def train(self, step: int, metrics: Mapping[str, float]) -> None:
        """Logs train metrics of `step` with throughput and ETA since the previous call."""
        now = time.time()
        steps = max(step - self._last_step, 1)
        step_time = (now - self._last_time) / steps
        clips = self.clips_per_step / step_time
        values = dict(metrics, clips_per_sec=clips,
                      clips_per_sec_per_device=clips / jax.device_count(), step_time=step_time)
        self._last_time, self._last_step = now, step
        eta = datetime.timedelta(seconds=int(step_time * (self.total_steps - step)))
        self.line(f"step {step}/{self.total_steps} loss {values['loss']:.4f} "
                  f"acc {values['accuracy']:.1f}% lr {values['lr']:.3g} "
                  f"grad_norm {values['grad_norm']:.3g} "
                  f"{values['clips_per_sec_per_device']:.2f} clips/s/device ETA {eta}")
        self.write(step, {f"train/{k}": v for k, v in values.items()})

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Appends `values` (flat, scalar) at `step` to the history and TensorBoard."""
        if not self.lead:
            return
        values = {k: float(v) for k, v in values.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(values, step=int(step))) + "\n")
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def line(self, text: str) -> None:
        """Prints one log line (lead host only)."""
        if self.lead:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_history(path: str) -> List[Dict[str, float]]:
    """The entries of a `metrics.jsonl` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
