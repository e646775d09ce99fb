"""Preemption: a SIGTERM (what preemptible / spot machines and schedulers send before they
take a machine away) ends training at the next step with a checkpoint of that step.

Multi-host runs (`jax.distributed`) use JAX's preemption sync point: the
notice reaches every host, they agree on the step at which all save, and
Orbax's `PreemptionCheckpointingPolicy` saves there
(`CheckpointManager.reached_preemption`). A single process has no such
service; `SigtermWatch` turns its SIGTERM into the same request.
"""

import signal
import threading

import jax

# What a SIGTERM-ed process reports (128 + 15), so that a scheduler restarts the job
# as it would restart a killed one; the rerun resumes from the checkpoint.
EXIT_CODE = 143


class Preempted(Exception):
    """Training stopped for a preemption after saving a checkpoint at `step`."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted: checkpoint saved at step {step} in {directory}; "
                         "rerun the same command to resume")
        self.step = step


class SigtermWatch:
    """While active (a `with` block), a SIGTERM sets `requested` instead of killing a
    single-process run; multi-host runs leave SIGTERM to JAX's preemption service."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _on_sigterm(self, signum, frame):
        del signum, frame
        self.requested = True

    def __enter__(self) -> "SigtermWatch":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
