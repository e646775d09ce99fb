"""Shared test helpers: where the reference fixtures live."""

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def fixtures_dir() -> Path:
    """`$TADAX_FIXTURES`, default `../shared/fixtures` beside the repository."""
    return Path(os.environ.get("TADAX_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


def shared_dir() -> Path:
    """The project's read-only shared material (`../shared`)."""
    return fixtures_dir().parent


def fixture_entries():
    """Entries of fixtures.json, or an empty list when the fixtures are absent."""
    index = fixtures_dir() / "fixtures.json"
    if not index.is_file():
        return []
    return json.loads(index.read_text())


def require(path: Path, what: str) -> Path:
    """Skips the calling test, naming the missing path, unless `path` exists."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set TADAX_FIXTURES to the shared fixtures)")
    return path
