"""User paths, local or remote (gs://...), through one layer: `etils.epath`.

epath dispatches `gs://` to TensorFlow's filesystem when TensorFlow is installed
(`EPATH_USE_TF=false`: gcsfs), and plain paths to the local filesystem.
"""

import contextlib
import errno
import io
import os
import re
import tempfile
from typing import Iterator, Optional, Tuple

import numpy as np
from etils import epath


def is_remote(path: "str | os.PathLike") -> bool:
    """True for a URL such as `gs://bucket/dir`."""
    return "://" in os.fspath(path)


def user_path(path: "str | os.PathLike") -> epath.Path:
    """`path` as an `epath.Path`: a URL as given; a local path with `~` expanded, made absolute."""
    if is_remote(path):
        return epath.Path(path)
    return epath.Path(path).expanduser().absolute()


def write_npz(path: epath.Path, **arrays) -> None:
    """`np.savez(path, **arrays)` for a local or gs:// `path`: the archive is built in
    memory and written in one go (zip writing seeks, which a gs:// file being written
    cannot)."""
    data = io.BytesIO()
    np.savez(data, **arrays)
    path.write_bytes(data.getvalue())


@contextlib.contextmanager
def local_copy(path: "str | os.PathLike") -> Iterator[str]:
    """A local file name for `path`: itself, or a temporary copy of a remote file (for
    readers that need a local file: the video decoder, safetensors' memory map)."""
    if not is_remote(path):
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, epath.Path(path).name)
        epath.Path(local).write_bytes(epath.Path(path).read_bytes())
        yield local


# What ran out, by errno and by the words of the layers that report it in a message
# (tensorstore: "[os_error_code='28']", TensorFlow, GCS's JSON errors).
_OUT_OF_SPACE = (
    (errno.ENOSPC, ("No space left on device", "os_error_code='28'"), "no space left on device"),
    (errno.EDQUOT, ("Disk quota exceeded", "os_error_code='122'"), "disk quota exceeded"),
)
_GCS_QUOTA = re.compile(r"quota", re.I)
_PATH_IN_MESSAGE = re.compile(r"(gs://[^\s\"']+|(?:local file|Failed writing:|file) \"([^\"]+)\")")


def out_of_space(error: BaseException) -> Optional[Tuple[str, str]]:
    """(path, what ran out) when `error`, or an exception it was raised from, says a write
    found no space: a full disk (ENOSPC), a disk quota (EDQUOT) or a storage quota of a
    bucket (an HTTP 403/429 'quota' error); None otherwise. The path is the one the error
    names ('' when it names none)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        for code, words, what in _OUT_OF_SPACE:
            if isinstance(error, OSError) and error.errno == code:
                return os.fspath(error.filename or ""), what
            if any(w in text for w in words):
                return _path_in(text), what
        if _GCS_QUOTA.search(text) and re.search(r"\b(403|429)\b|RESOURCE_EXHAUSTED|"
                                                 r"PERMISSION_DENIED", text):
            return _path_in(text), "storage quota exceeded"
        error = error.__cause__ or error.__context__
    return None


def _path_in(message: str) -> str:
    match = _PATH_IN_MESSAGE.search(message)
    if match is None:
        return ""
    return match.group(2) or match.group(1)
