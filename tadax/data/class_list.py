"""`classes.txt`: the class names beside prepared shards, one a line, line number = label index.

Preparation writes it; the input pipeline, `eval.py --labels` and
preparation's `--labels` read it. The text checks (UTF-8, no NUL byte, the
line that breaks them named) are the ones every annotation file of
preparation gets too (`tadax.prepare.annotations`).
"""

from typing import Iterator, List, Optional, Sequence, Tuple

from etils import epath


class TextFileError(ValueError):
    """A text input (class list, annotation file) that cannot be read; the message (one line)
    names the file and what is wrong."""


def read_text(path: str) -> str:
    """The file's text (UTF-8, optional BOM); undecodable bytes are kept as surrogates so
    that the line holding them can be reported. Raises `TextFileError` if unreadable."""
    try:
        data = epath.Path(path).read_bytes()
    except (OSError, ValueError) as e:
        raise TextFileError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    return data.decode("utf-8-sig", errors="surrogateescape")


def text_defect(text: str) -> Optional[str]:
    """Why `text` (one line or field) is not usable text, or None."""
    if any("\udc80" <= c <= "\udcff" for c in text):
        return "not UTF-8 text"
    if "\0" in text:
        return "contains a NUL byte"
    return None


def text_lines(path: str) -> Iterator[Tuple[str, str, Optional[str]]]:
    """(source `path:N`, stripped line, defect or None) for each non-empty line."""
    for line_no, line in enumerate(read_text(path).split("\n"), start=1):
        if line.strip():
            yield f"{path}:{line_no}", line.strip(), text_defect(line)


def read_classes(path: str) -> List[str]:
    """Class names, one a line, in index order. Raises `TextFileError` for an unreadable
    file, undecodable text or duplicate names."""
    names = []
    for source, line, defect in text_lines(path):
        if defect:
            raise TextFileError(f"{source}: {defect}")
        names.append(line)
    if len(set(names)) != len(names):
        raise TextFileError(f"{path}: duplicate class names")
    return names


def write_classes(path: str, names: Sequence[str]) -> None:
    """Writes class names one a line (index order)."""
    epath.Path(path).write_text("".join(f"{n}\n" for n in names))
