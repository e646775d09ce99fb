"""Stopping a run on request: a SIGTERM (what preemptible / spot machines and schedulers send
before they take a machine away) or a Ctrl-C (SIGINT) ends training at the next step
with a checkpoint of that step.

Multi-host runs (`jax.distributed`) use JAX's preemption sync point: the
notice reaches every host, they agree on the step at which all save, and
Orbax's `PreemptionCheckpointingPolicy` saves there
(`CheckpointManager.reached_preemption`). A single process has no such
service; `StopWatch` turns its SIGTERM or first Ctrl-C into the same request.
A second Ctrl-C stops the process at once (the default action of SIGINT: no
handler, no traceback; the checkpoints written so far are intact).
"""

import os
import signal
import threading

import jax

from tadax.startup import CTRL_C_EXIT_CODE

# What a SIGTERM-ed process reports (128 + 15), so that a scheduler restarts the job
# as it would restart a killed one; the rerun resumes from the checkpoint.
SIGTERM_EXIT_CODE = 143
_EXIT_CODES = {signal.SIGTERM: SIGTERM_EXIT_CODE, signal.SIGINT: CTRL_C_EXIT_CODE}
_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}


class Preempted(Exception):
    """Training stopped on request after saving a checkpoint at `step`; `exit_code` is
    what the command exits with (143 for SIGTERM, 130 for Ctrl-C)."""

    def __init__(self, step: int, directory: str, signum: int = signal.SIGTERM):
        what = "preempted" if signum == signal.SIGTERM else "interrupted (Ctrl-C)"
        super().__init__(f"{what}: checkpoint saved at step {step} in {directory}; "
                         "rerun the same command to resume")
        self.step = step
        self.exit_code = _EXIT_CODES[signum]


class StopWatch:
    """While active (a `with` block), a SIGTERM or a first Ctrl-C sets `requested` (and
    `signum`) instead of ending a single-process run; multi-host runs leave SIGTERM to
    JAX's preemption service and hand it a Ctrl-C as a SIGTERM."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGTERM
        self._previous = {}

    def _on_signal(self, signum, frame):
        del frame
        if not self.requested:
            self.requested, self.signum = True, signum
        if signum == signal.SIGINT:
            # The next Ctrl-C takes SIGINT's default action: the process ends at once.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            if jax.process_count() > 1:
                os.kill(os.getpid(), signal.SIGTERM)   # JAX's preemption notice
        # A raw write: the handler may run while the main thread is inside print().
        os.write(2, f"\n{_NAMES[signum]}: finishing the current step, then saving it"
                    f"{'; Ctrl-C again stops at once without saving' if signum == signal.SIGINT else ''}"
                    "\n".encode())

    def __enter__(self) -> "StopWatch":
        if threading.current_thread() is not threading.main_thread():
            return self
        signals = [signal.SIGINT] + ([signal.SIGTERM] if jax.process_count() == 1 else [])
        for signum in signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def close(self) -> None:
        """Gives the signals back to the handlers they had before (also on leaving `with`)."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self.close()
