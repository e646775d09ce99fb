"""Which checkpoint a run resumes from: the newest one that restores.

A checkpoint can be complete in Orbax's eyes and still not read back: a data
file truncated by a host that died while a copy ran, an object partly
rewritten. Such a checkpoint is named in one line (step and reason), set aside
under `WORKDIR/unreadable_checkpoints/<step>` (renamed, never deleted, out of
reach of Orbax's clean-up of unfinished saves) and the run resumes from the
one before it. When none restores, nothing is moved: the command stops with
one line naming each checkpoint and why.

An error that says nothing about the checkpoint itself (memory, network,
permissions: `TRANSIENT`) stops the command without setting anything aside,
since the same checkpoint may read fine on the next try.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
from etils import epath

from tadax.errors import RunDirectoryError
from tadax.train import hosts
from tadax.train.checkpointing import finished_steps, restore_checkpoint

SET_ASIDE_DIR = "unreadable_checkpoints"
# Status codes (tensorstore, XLA, gRPC) and exception types of errors that are no
# evidence of a damaged checkpoint.
TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED",
                   "PERMISSION_DENIED", "ABORTED", "CANCELLED")
TRANSIENT_TYPES = (MemoryError, PermissionError, TimeoutError, ConnectionError)


def _chain(error: BaseException) -> List[BaseException]:
    """`error` and the exceptions it was raised from, outermost first."""
    chain = [error]
    while chain[-1].__cause__ or chain[-1].__context__:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt in chain:
            break
        chain.append(nxt)
    return chain


def reason(error: BaseException, limit: int = 240) -> str:
    """A one-line reason for `error`: the first line of its innermost cause."""
    root = _chain(error)[-1]
    text = (str(root).strip().splitlines() or [type(root).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_transient(error: BaseException) -> bool:
    return any(isinstance(e, TRANSIENT_TYPES) or any(c in str(e) for c in TRANSIENT_CODES)
               for e in _chain(error))


def set_aside(workdir: epath.Path, step: int) -> epath.Path:
    """Moves checkpoint `step` to `WORKDIR/unreadable_checkpoints/<step>[.N]`; returns where."""
    folder = workdir / SET_ASIDE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target, n = folder / str(step), 1
    while target.exists():
        n += 1
        target = folder / f"{step}.{n}"
    (workdir / "checkpoints" / str(step)).rename(target)
    return target


def restore_newest(workdir: epath.Path, abstract_state: Any, say: Callable[[str], None]
                   ) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """(step, train state, data position) of the newest checkpoint of `workdir` that
    restores, or None when the run has no checkpoint.

    Newer checkpoints that fail to read are set aside (lead host), each reported
    through `say` in one line. Raises `RunDirectoryError` when none restores
    (nothing moved) or when an error looks transient (nothing moved).
    """
    directory = workdir / "checkpoints"
    steps = sorted(finished_steps(directory), reverse=True)
    failed = []
    for step in steps:
        try:
            state, position = restore_checkpoint(directory, step, abstract_state)
            error = None
        except Exception as e:   # anything a damaged file can raise, from any layer
            error = e
            if is_transient(e):
                raise RunDirectoryError(
                    f"could not read checkpoint {step} in {directory}: {reason(e)}; this looks "
                    "temporary (memory, network or permissions), so nothing was set aside: "
                    "fix the cause and rerun the same command") from None
        if not hosts.all_true("restore", error is None):
            failed.append((step, reason(error) if error else "unreadable on another host"))
            continue
        for bad, why in failed:
            if jax.process_index() == 0:
                where = set_aside(workdir, bad)
                say(f"checkpoint {bad} does not restore ({why}): set aside as {where}; "
                    f"resuming from step {step}")
        if failed:
            hosts.barrier("set_aside")
        return step, state, position
    if failed:
        listed = "; ".join(f"step {s}: {why}" for s, why in failed)
        raise RunDirectoryError(
            f"no checkpoint in {directory} restores ({listed}); nothing was changed. Restore "
            f"the files from a copy, or move {directory} aside to start the run again")
    return None
