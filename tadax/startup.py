"""What an entry point (train.py, eval.py) does first, before importing anything heavy.

- Re-runs itself once with huge pages for the host allocator (`tadax.host_memory`).
- Imports TensorFlow without the lines its C++ side prints while it loads.
- Makes Ctrl-C end the process with one line and exit code 130 instead of a
  KeyboardInterrupt traceback: at start-up there is nothing to save, so it
  exits at once. A command replaces the line with `on_ctrl_c` as it goes, and
  training replaces the whole handler while it runs (`tadax.train.preemption`).
"""

import os
import signal
import sys

from tadax import host_memory

# What a process stopped by Ctrl-C reports (128 + SIGINT), as a shell does.
CTRL_C_EXIT_CODE = 130

_message = "interrupted (Ctrl-C) while starting: nothing was written"
# Where the Ctrl-C line goes: stderr, or its saved copy while stderr is on /dev/null.
_stderr = 2


def _exit_on_ctrl_c(signum, frame) -> None:
    del signum, frame
    # A raw write: the handler may run while the main thread is inside print().
    os.write(_stderr, f"\n{_message}\n".encode())
    os._exit(CTRL_C_EXIT_CODE)


def on_ctrl_c(message: str) -> None:
    """The line a Ctrl-C prints from now on (while the start-up handler is installed)."""
    global _message
    _message = message


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with the process's stderr (file descriptor 2) on /dev/null.

    TensorFlow's C++ side prints its start-up lines while it loads (absl's 'All log
    messages before absl::InitializeLog() is called' warning, oneDNN and CPU-feature
    notes), before any setting can silence them; a command's output starts with its own
    lines instead. A Python error raised by the import still surfaces, after stderr is back.
    """
    global _stderr
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    _stderr = saved
    os.dup2(null, 2)
    try:
        import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    finally:
        os.dup2(saved, 2)
        _stderr = 2
        os.close(saved)
        os.close(null)


def prepare() -> None:
    """Huge pages (re-runs the process once), a one-line Ctrl-C, TensorFlow imported
    without its start-up lines."""
    host_memory.reexec_with_huge_pages()
    signal.signal(signal.SIGINT, _exit_on_ctrl_c)
    import_tensorflow_quietly()
