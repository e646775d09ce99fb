"""What an entry point (train.py, eval.py) does first, before importing anything heavy.

- Re-runs itself once with huge pages for the host allocator (`tadax.host_memory`).
- Makes Ctrl-C end the process with one line and exit code 130 instead of a
  KeyboardInterrupt traceback: at start-up there is nothing to save, so it
  exits at once. A command replaces the line with `on_ctrl_c` as it goes, and
  training replaces the whole handler while it runs (`tadax.train.preemption`).
"""

import os
import signal

from tadax import host_memory

# What a process stopped by Ctrl-C reports (128 + SIGINT), as a shell does.
CTRL_C_EXIT_CODE = 130

_message = "interrupted (Ctrl-C) while starting: nothing was written"


def _exit_on_ctrl_c(signum, frame) -> None:
    del signum, frame
    # A raw write: the handler may run while the main thread is inside print().
    os.write(2, f"\n{_message}\n".encode())
    os._exit(CTRL_C_EXIT_CODE)


def on_ctrl_c(message: str) -> None:
    """The line a Ctrl-C prints from now on (while the start-up handler is installed)."""
    global _message
    _message = message


def prepare() -> None:
    """Huge pages (re-runs the process once), then a one-line Ctrl-C."""
    host_memory.reexec_with_huge_pages()
    signal.signal(signal.SIGINT, _exit_on_ctrl_c)
