"""Command-line pieces shared by train.py, eval.py and `python -m tadax.features`:
multi-host start-up flags, a checkpoint's own config as the default, and user errors
reported as one line."""

import functools
import re
import sys
from typing import Sequence

import jax
from absl import flags

from tadax import checkpoint_io
from tadax.checkpoint_io import CheckpointError
from tadax.data.video import VideoDecodeError
from tadax.errors import ConfigError
from tadax.train import run_config
from tadax.train.state import InitError
from tadax.weights.infer import ArchitectureError
from tadax.weights.mapping import WeightMismatchError

# Errors whose message tells the user what to change: no traceback for them.
USER_ERRORS = (ConfigError, CheckpointError, InitError, VideoDecodeError, ArchitectureError,
               WeightMismatchError)

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


def check_config_source(checkpoint: str, argv: Sequence[str]) -> None:
    """Without --config in `argv`, `checkpoint` must carry its config (a converted directory
    or a run with its saved config.json); otherwise ConfigError."""
    if any(re.fullmatch(r"--?config(=.*)?", a) for a in argv):
        return
    if not checkpoint_io.is_model_dir(checkpoint) and run_config.run_dir_of(checkpoint) is None:
        raise ConfigError(f"--checkpoint={checkpoint} is neither a converted model directory "
                          f"nor a training run with a saved {run_config.CONFIG_FILE}: pass the "
                          "recipe with --config")


def one_line_errors(main):
    """Wraps an absl `main(argv)`: a user error prints `error: MESSAGE` and exits with 1."""
    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
    return wrapped
