"""Every command in the README's and docs/'s shell blocks and tables is accepted as written.

The README is the user's guide: a renamed flag, a removed config field, a moved script or
a renamed function must fail here, not on a user's machine. Its commands need real data,
a downloaded checkpoint or minutes of training, so each is checked without running its
work: argparse programs (`python -m tadax.convert`, `... tadax.bench`, `... tadax.prepare`)
parse the command with their own parser, in this process; absl programs (`train.py`,
`eval.py`, `python -m tadax.features`, `... tadax.finetune`) run once each with
`--helpfull`, as a user would, and every flag of every command must be one they list; `--config FILE[:ARG]` must load
and every `--config.a.b=v` must name a field of that config (of the program's default
config when there is no `--config`) and parse as its type. `pip install` lines name
existing extras, the test command is the one CI runs, and the Python blocks' `tadax`
imports resolve.
"""

import ast
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import shared_run

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
ABSL_PROGRAMS = {("train.py",): "configs/quickstart.py", ("eval.py",): "configs/quickstart.py",
                 ("-m", "tadax.features"): "configs/quickstart.py",
                 ("-m", "tadax.finetune"): "configs/finetune.py"}


def _blocks(path: Path, languages):
    """(first line number, text) of each fenced block of `path` in one of `languages`."""
    text = path.read_text()
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if m.group(1) in languages:
            yield text.count("\n", 0, m.start()) + 2, m.group(2)


def _commands(path: Path):
    """(`file:line`, argv) of every command of the shell blocks: continuation lines
    joined, comments dropped, `a && b` split."""
    for first, block in _blocks(path, ("bash", "sh")):
        lines = block.split("\n")
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.endswith("\\"):
                i += 1
                line = line[:-1] + " " + lines[i]
            i += 1
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                yield f"{path.relative_to(REPO)}:{first + start}", words[:cut]
                words = words[cut + 1:]


def _table_commands(path: Path):
    """(`file:line`, argv) of each table cell that is a command and nothing else (the
    zoo's convert commands, the quick start's two runs)."""
    for number, line in enumerate(path.read_text().split("\n"), start=1):
        if line.startswith("|"):
            for code in re.findall(r"\|\s*`((?:python|pip) [^`]+)`\s*(?=\|)", line):
                yield f"{path.relative_to(REPO)}:{number}", shlex.split(code)


COMMANDS = [c for doc in DOCS for c in [*_commands(doc), *_table_commands(doc)]]
PYTHON_BLOCKS = [(f"{doc.relative_to(REPO)}:{line}", text) for doc in DOCS
                 for line, text in _blocks(doc, ("python",))]


def _run_helpfull(folder: Path) -> None:
    """Runs every absl program with `--helpfull`, side by side, each in a fresh interpreter;
    writes program i's stdout and stderr to `i.out`, `i.err` in `folder`."""
    folder.mkdir()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    runs = [subprocess.Popen([sys.executable, *prog, "--helpfull"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for prog in ABSL_PROGRAMS]
    for i, run in enumerate(runs):
        out, err = run.communicate(timeout=300)
        (folder / f"{i}.out").write_text(out)
        (folder / f"{i}.err").write_text(err)


@pytest.fixture(scope="module")
def absl_flags():
    """{program: set of flag names} from one `--helpfull` run of each absl program, in fresh
    interpreters, once per test session: the help on stdout, nothing on stderr. This is
    where every entry point's own start-up is checked for TensorFlow's lines while it loads
    (other tests start commands through tests/command_server.py, which has TensorFlow
    imported already). Bug watched: a package `__init__` importing TensorFlow before the
    entry point's quiet import (`python -m tadax.features` printed its lines)."""
    folder = shared_run("readme_helpfull", _run_helpfull)
    names = {}
    for i, prog in enumerate(ABSL_PROGRAMS):
        out, err = (folder / f"{i}.out").read_text(), (folder / f"{i}.err").read_text()
        names[prog] = set(re.findall(r"^\s+--(?:\[no\])?([\w.-]+):", out, re.M))
        assert "config" in names[prog], f"{' '.join(prog)} --helpfull:\n{out[-3000:]}{err}"
        assert err == "", f"{' '.join(prog)} --helpfull printed on stderr:\n{err}"
    return names


def _load_config(spec: str):
    """The config of `--config FILE[:ARG]` (a file under configs/)."""
    file, _, arg = spec.partition(":")
    path = REPO / file
    assert path.is_file() and path.parent == REPO / "configs", f"--config {file}: no such config"
    return importlib.import_module(f"configs.{path.stem}").get_config(arg)


def _check_field(config, dotted: str, value: str) -> None:
    """`--config.DOTTED=VALUE` names a field of `config` and `VALUE` parses as its type."""
    node = config
    for part in dotted.split("."):
        assert hasattr(node, "keys") and part in node, f"--config.{dotted}: no such field"
        node = node[part]
    if isinstance(node, bool):
        assert value.lower() in ("true", "false", "1", "0"), f"--config.{dotted}={value}"
    elif isinstance(node, (int, float)):
        float(value)


def _check_absl(prog, args, flags) -> None:
    config_spec, overrides = ABSL_PROGRAMS[prog], []
    i = 0
    while i < len(args):
        name, eq, value = args[i].lstrip("-").partition("=")
        if not args[i].startswith("--"):
            raise AssertionError(f"unexpected argument {args[i]!r}")
        if name.startswith("config."):
            overrides.append((name[len("config."):], value))
        else:
            base = name[2:] if name.startswith("no") and name[2:] in flags else name
            assert base in flags, f"--{name}: not a flag of {' '.join(prog)}"
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                i += 1
                value = args[i]
            if name == "config":
                config_spec = value
        i += 1
    config = _load_config(config_spec)
    for dotted, value in overrides:
        _check_field(config, dotted, value)


def _check_argparse(prog, args) -> None:
    if prog == ("-m", "tadax.convert"):
        from tadax import convert
        convert.parser().parse_args(args)
    elif prog == ("-m", "tadax.bench"):
        from tadax.bench import __main__ as bench
        from tadax.bench.recipes import parse_overrides, recipe_config
        parsed = bench.parse_args(args)
        for name in parsed.models:
            recipe_config(name, parse_overrides(parsed.set))
    elif prog in (("-m", "tadax.prepare"), ("data/prepare.py",)):
        from tadax.prepare import cli
        cli.parse_args(args)
    else:
        raise AssertionError(f"no check for `python {' '.join(prog)}`: add one to this test")


def _check_pip(args) -> None:
    assert args[:1] == ["install"] and len(args) == 2, args
    match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", args[1])
    assert match, f"pip install {args[1]}: expected . or '.[extra]'"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra in filter(None, (match.group(1) or "").split(",")):
        assert extra in extras, f"pip install '.[{extra}]': no such extra ({sorted(extras)})"


def _check_pytest(args) -> None:
    ci = (REPO / ".ci/run").read_text()
    assert f"python -m pytest {' '.join(args)}" in ci, "the README's test command is not CI's"
    if "-n" in args:
        test_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
            "optional-dependencies"]["test"]
        assert any(dep.startswith("pytest-xdist") for dep in test_extra)


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_is_accepted(where, argv, absl_flags, capsys):
    if argv[0] == "pip":
        return _check_pip(argv[1:])
    assert argv[0] == "python", f"{where}: no check for `{argv[0]}`: add one to this test"
    prog = tuple(argv[1:3]) if argv[1] == "-m" else (argv[1],)
    args = argv[1 + len(prog):]
    if prog == ("-m", "pytest"):
        return _check_pytest(args)
    try:
        if prog in ABSL_PROGRAMS:
            _check_absl(prog, args, absl_flags[prog])
        else:
            _check_argparse(prog, args)
    except SystemExit as e:     # argparse's usage error
        pytest.fail(f"{where}: {' '.join(argv)}\n{capsys.readouterr().err}exit {e.code}")
    except AssertionError as e:
        pytest.fail(f"{where}: {' '.join(argv)}\n{e}")


@pytest.mark.parametrize("where, code", PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block_imports_resolve(where, code):
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("tadax"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(
                    f"{node.module}.{alias.name}"), f"{where}: {node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tadax"):
                    assert importlib.util.find_spec(alias.name), f"{where}: {alias.name}"


def test_the_readme_starts_with_the_two_commands_ci_and_users_run():
    readme = [argv for where, argv in COMMANDS if where.startswith("README.md")]
    (ci_tests,) = [shlex.split(line) for line in (REPO / ".ci" / "run").read_text().splitlines()
                   if line.startswith("python -m pytest ")]
    assert readme[:4] == [["pip", "install", "."], ["python", "train.py"],
                          ["pip", "install", ".[test]"], ci_tests]
