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
# TensorFlow's switch to the tf_keras package (see `import_tensorflow_quietly`).
_LEGACY_KERAS = "TF_USE_LEGACY_KERAS"
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

    Later C++ INFO lines stay out too (tf.data's "TFRecordDataset `buffer_size` is
    unspecified" on every run): `TF_CPP_MIN_LOG_LEVEL` defaults to 1, as importing jax sets
    it, but before TensorFlow's logging reads it; a user's own setting is kept.

    It also leaves Keras out: TensorFlow imports Keras 3 (and with it matplotlib's pyplot)
    eagerly unless `TF_USE_LEGACY_KERAS` asks for the separate tf_keras package, whose
    absence it then passes over. The commands never use `tf.keras`; without Keras the import
    costs about 1 s less CPU (of ~4). The variable is set only while TensorFlow loads.
    """
    global _stderr
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    _stderr = saved
    os.dup2(null, 2)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    keras_setting = os.environ.get(_LEGACY_KERAS)
    os.environ[_LEGACY_KERAS] = "1"
    try:
        import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    finally:
        if keras_setting is None:
            del os.environ[_LEGACY_KERAS]
        else:
            os.environ[_LEGACY_KERAS] = keras_setting
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
