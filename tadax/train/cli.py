"""Command-line pieces shared by train.py, eval.py and `python -m tadax.features`:
multi-host start-up flags, a checkpoint's own config as the default, and user errors
reported as one line."""

import functools
import logging as py_logging
import os
import re
import sys
from typing import Sequence

import jax
from absl import flags, logging

from tadax import checkpoint_io
from tadax.checkpoint_io import CheckpointError
from tadax.data.video import VideoDecodeError
from tadax.errors import ConfigError, NonFiniteLossError, RunDirectoryError
from tadax.train import run_config
from tadax.train.state import InitError
from tadax.weights.infer import ArchitectureError
from tadax.weights.mapping import WeightMismatchError

# Errors whose message tells the user what to change: no traceback for them.
USER_ERRORS = (ConfigError, CheckpointError, InitError, VideoDecodeError, ArchitectureError,
               WeightMismatchError, RunDirectoryError, NonFiniteLossError)

flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize().")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")


def initialize_distributed() -> None:
    """With --distributed, `jax.distributed.initialize` from the flags given (the platform's
    own settings for those left out, e.g. on Cloud TPU or SLURM)."""
    if flags.FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=flags.FLAGS.coordinator_address,
                                   num_processes=flags.FLAGS.num_processes,
                                   process_id=flags.FLAGS.process_id)


def checkpoint_arg(argv: Sequence[str]) -> str:
    """The --checkpoint value on the command line `argv` ('' if absent): commands that
    read a checkpoint default to its own config (`configs/checkpoint.py:CHECKPOINT`), and
    config_flags loads a default config when the flag is defined, before flags are parsed."""
    for i, arg in enumerate(argv):
        match = re.fullmatch(r"--?checkpoint(=(.*))?", arg)
        if match:
            return match.group(2) if match.group(1) else (argv[i + 1] if i + 1 < len(argv) else "")
    return ""


def config_given(argv: Sequence[str]) -> bool:
    """Whether `argv` holds --config (which replaces a checkpoint's own config)."""
    return any(re.fullmatch(r"--?config(=.*)?", a) for a in argv)


def default_config(repo_root: str, argv: Sequence[str]) -> str:
    """The --config default of a command that reads a checkpoint: its own config
    (`configs/checkpoint.py:CHECKPOINT`), not read at all when --config replaces it."""
    return os.path.join(repo_root, "configs", "checkpoint.py") + ":" + (
        "" if config_given(argv) else checkpoint_arg(argv))


def exit_on_damaged_run_config(argv: Sequence[str]) -> None:
    """Without --config the default config of a run is its config.json, read when the
    config flag is defined (before `main`): a damaged one is reported here, in one line."""
    checkpoint = checkpoint_arg(argv)
    if (not checkpoint or config_given(argv) or checkpoint_io.is_model_dir(checkpoint)
            or run_config.run_dir_of(checkpoint) is None):
        return
    try:
        run_config.read_run_config(checkpoint)
    except RunDirectoryError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def check_config_source(checkpoint: str, argv: Sequence[str]) -> None:
    """Without --config in `argv`, `checkpoint` must carry its config (a converted directory
    or a run with its saved config.json); otherwise ConfigError."""
    if config_given(argv):
        return
    if not checkpoint_io.is_model_dir(checkpoint) and run_config.run_dir_of(checkpoint) is None:
        raise ConfigError(f"--checkpoint={checkpoint} is neither a converted model directory "
                          f"nor a training run with a saved {run_config.CONFIG_FILE}: pass the "
                          "recipe with --config")


def _from_orbax(record: py_logging.LogRecord) -> bool:
    """Whether `record` was logged by Orbax or carries an exception raised inside Orbax."""
    if "/orbax/" in record.pathname:
        return True
    error = record.exc_info[1] if record.exc_info else None
    while error is not None:
        tb = error.__traceback__
        while tb is not None:
            if "/orbax/" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return False


# Orbax's warning when a save waits for the previous one ("... took 1.2 seconds. If this
# number is high, consider checkpointing less frequently"): with checkpoint.every_steps
# small it comes at every save, and the step lines' clips/s already show the wait.
_ORBAX_SAVE_WAIT = "Waiting for previous save to complete"


class _NoOrbaxNoise(py_logging.Filter):
    """Orbax logs each failure of its background save threads, traceback included, before
    the failure reaches the main thread, which reports it (once, in one line when it is
    the user's to act on: a full disk, a quota). When a checkpoint read fails, asyncio
    also logs the gathered reads Orbax abandoned ('exception was never retrieved'). Both
    are dropped, and Orbax's save-wait warning; other warnings pass."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        if not _from_orbax(record):
            return True
        if record.levelno >= py_logging.ERROR:
            return False
        return not record.getMessage().startswith(_ORBAX_SAVE_WAIT)


def _abandoned_read(unraisable) -> bool:
    """An error Python cannot raise anywhere, left by a checkpoint read that Orbax
    abandoned: a coroutine of Orbax's, or a read finishing after Orbax closed the event
    loop waiting for it (tensorstore reports its callback's failure without an object)."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "/orbax/" in code.co_filename:
        return True
    return unraisable.exc_type is RuntimeError and \
        str(unraisable.exc_value) == "Event loop is closed"


def quiet_output() -> None:
    """What a command prints besides its own lines: Python-side logs at warnings and above,
    without Orbax's reports of errors the command reports itself or its save-wait warning. When one read of a
    checkpoint fails, Orbax abandons the others: their complaints ('Exception ignored in
    <coroutine>', 'Event loop is closed' from reads that finish later) are dropped too."""
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(_NoOrbaxNoise())
    py_logging.getLogger("asyncio").addFilter(_NoOrbaxNoise())
    default_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: None if _abandoned_read(u) else default_hook(u)


def _config_error(error: Exception, argv: Sequence[str]) -> str:
    """One line for an error ml_collections raises on a --config override (a Python error
    whose text is a quoted repr, e.g. of a KeyError with a 'Did you mean' suggestion)."""
    detail = str(error.args[0] if error.args else error)
    detail = detail.replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
    detail = re.sub(r"^'*([^' ]+)'*", r"'\1'", " ".join(detail.split()).strip("'"))
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    return f"a --config override does not fit the config ({', '.join(overrides)}): {detail}"


def define_config(default: str, help_text: str) -> None:
    """Defines the locked `--config` flag (`FILE[:ARG]`, fields overridable as
    `--config.a.b=v`). ml_collections applies the overrides found in `sys.argv` when the
    flag is defined, and raises Python errors for a field that does not exist or a value of
    the wrong type: those end the command here in one line, exit code 1."""
    from ml_collections import config_flags

    try:
        config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {_config_error(e, sys.argv)}", file=sys.stderr)
        sys.exit(1)


def parse_flags(argv: Sequence[str]) -> list:
    """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`) with its errors in one
    line, exit code 1: a flag absl refuses, and a `--config` override that does not fit."""
    try:
        rest = flags.FLAGS(list(argv))
        if "config" in flags.FLAGS:   # a config file that failed to load raises on first use
            flags.FLAGS.config.keys()
        return rest
    except flags.Error as e:         # its text may hold a whole traceback: first and last line
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        message = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        message = _config_error(e, argv)
    except OSError as e:             # ml_collections' report ends with the reason
        reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
        message = f"--config={flags.FLAGS['config'].config_filename}: cannot load it: {reason}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def one_line_errors(main):
    """Wraps an absl `main(argv)`: a user error prints `error: MESSAGE` and exits with 1.

    A single process then ends at once (`os._exit`): after a failed asynchronous save,
    Orbax's helper threads would hold the interpreter's exit for minutes waiting for
    signals that never come, and its abandoned coroutines would complain at shutdown.
    Everything of the run is closed by then (the trainer closes its files and releases
    the run directory's lock before the error gets here). Several processes take the
    ordinary exit, which also takes leave of the other hosts (`jax.distributed`).
    """
    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            if jax.process_count() > 1:
                sys.exit(1)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
    return wrapped
