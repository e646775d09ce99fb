"""Run logs: a progress line per log period, metrics history (JSON lines) and TensorBoard.

Only the lead host (process 0) writes files; every host prints nothing but
what the lead prints. The history file `WORKDIR/metrics.jsonl` survives
restarts (a resumed run appends to it, dropping entries past its step), so the
curves of an interrupted run are whole.
"""

import datetime
import json
import time
from typing import Dict, List, Mapping

import jax
import tensorflow as tf
from etils import epath
from tensorflow.core.framework import summary_pb2

from tadax.paths import user_path

# What TensorBoard's scalar dashboard reads (as `tf.summary.scalar` writes it, which needs
# the tensorboard package; TensorFlow writes the events, to local or gs:// folders).
_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


class MetricLogger:
    """Log lines, `metrics.jsonl` and TensorBoard events for one run.

    total_steps: last step of the run; start_step: where this process started;
    clips_per_step: the global batch.
    """

    def __init__(self, workdir: "str | epath.Path", total_steps: int, start_step: int,
                 clips_per_step: int):
        self.lead = jax.process_index() == 0
        self.total_steps = total_steps
        self.clips_per_step = clips_per_step
        workdir = user_path(workdir)
        self.path = workdir / "metrics.jsonl"
        self._last_time, self._last_step = time.time(), start_step
        self.writer = None
        if self.lead:
            workdir.mkdir(parents=True, exist_ok=True)
            self._truncate(start_step)
            self.writer = tf.summary.create_file_writer(str(workdir / "tensorboard"))

    def _truncate(self, start_step: int) -> None:
        """Drops history entries after `start_step` (written by a run killed before its save)."""
        if not self.path.exists():
            return
        kept = [line + "\n" for line in self.path.read_text().splitlines()
                if json.loads(line)["step"] <= start_step]
        self.path.write_text("".join(kept))

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
        with self.path.open("a") as f:
            f.write(json.dumps(dict(values, step=int(step))) + "\n")
        with self.writer.as_default(step=int(step)):
            for key, value in values.items():
                tf.summary.write(key, tf.constant(value, tf.float32), metadata=_SCALAR)
        self.writer.flush()

    def line(self, text: str) -> None:
        """Prints one log line (lead host only)."""
        if self.lead:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_history(path: "str | epath.Path") -> List[Dict[str, float]]:
    """The entries of a `metrics.jsonl` file (local or gs://...)."""
    return [json.loads(line) for line in epath.Path(path).read_text().splitlines() if line.strip()]
