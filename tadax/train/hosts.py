"""Small agreements between the hosts of a multi-host run, through the key-value store of
JAX's distributed runtime (no device collective: nothing to compile, nothing printed by
the collectives' library). On one process every function is the identity.

Each call site passes a `name` unique to it; all hosts must make the same calls in the
same order (a counter per name keeps repeated calls apart).
"""

import itertools
from collections import defaultdict

import jax

# How long a host waits for the others; a host that never comes is a failed run anyway.
TIMEOUT_MS = 10 * 60 * 1000
_calls = defaultdict(itertools.count)


def _client():
    from jax._src import distributed   # the runtime's client: jax has no public handle
    return distributed.global_state.client


def _key(name: str) -> str:
    return f"tadax/{name}/{next(_calls[name])}"


def lead_value(name: str, text: str) -> str:
    """The lead host's (process 0's) `text`, on every host."""
    if jax.process_count() == 1:
        return text
    key = _key(name)
    if jax.process_index() == 0:
        _client().key_value_set(key, text)
        return text
    return _client().blocking_key_value_get(key, TIMEOUT_MS)


def all_true(name: str, ok: bool) -> bool:
    """True on every host when `ok` is true on every host."""
    if jax.process_count() == 1:
        return ok
    key = _key(name)
    _client().key_value_set(f"{key}/{jax.process_index()}", "1" if ok else "0")
    return all(_client().blocking_key_value_get(f"{key}/{i}", TIMEOUT_MS) == "1"
               for i in range(jax.process_count()))


def barrier(name: str) -> None:
    """Returns when every host got here."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(_key(name), TIMEOUT_MS)
