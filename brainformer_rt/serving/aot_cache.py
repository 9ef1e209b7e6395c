"""The ``aot`` engine's package cache on disk: its files, one build per package at a time, and
its upkeep (stale files of a killed build, what ``engine status`` and ``engine clear`` show).

No torch here: ``brainformer-rt engine status`` and ``engine clear`` read the cache without
loading a model.

Files of ``aot_cache_dir()`` (mode 0700; ``KEY`` is the package's cache key, see
:class:`~brainformer_rt.serving.engine.AotEngine`):

- ``KEY.pt2``: a compiled package, complete (written beside it, then renamed);
- ``KEY.json``: what it was built for (model, shapes, threads, torch, CPU, build settings, when);
- ``KEY.lock``: exists while ``KEY`` is being built. The one process building it holds an
  exclusive ``flock`` on it (released by the kernel when that process dies, however it dies)
  and wrote its pid into it; it removes the file before it lets go of the lock;
- ``KEY.tmp-*``: files and folders of a build in progress (the package being written, the model
  handed to a background build);
- ``KEY.log``: what the last build of ``KEY`` said when it failed (removed when one succeeds).

A ``KEY.tmp-*`` or ``KEY.lock`` whose lock nobody holds is what a killed build left:
:func:`clean_stale` removes it. ``tmp*.pt2`` files are what builds of earlier versions (which had
no lock) left; they are removed too.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

__all__ = ["BUILD_TIMEOUT_S", "TMP_MARK", "PackageLock", "BuildWaitTimeout", "CacheEntry", "Builder",
           "aot_cache_dir", "ensure_cache_dir", "lock_path", "log_path", "sidecar_path", "acquire_unless_ready",
           "lock_holder", "clean_stale", "cache_listing", "running_builders", "stop_builders", "clear_cache",
           "read_last_line"]

#: The part of a temporary file's name after its key (``KEY.tmp-…``).
TMP_MARK = ".tmp-"
#: The longest a build may take (it stops itself then), and the longest anyone waits for one.
BUILD_TIMEOUT_S = 900.0


def aot_cache_dir() -> Path:
    """Where ``aot`` keeps its compiled packages: ``$BRAINFORMER_CACHE/aot``, else
    ``$XDG_CACHE_HOME/brainformer/aot``, else ``~/.cache/brainformer/aot``."""
    root = os.environ.get("BRAINFORMER_CACHE")
    if root:
        return Path(root) / "aot"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "brainformer" / "aot"


def ensure_cache_dir(cache: Path) -> Path:
    """``cache``, created private (0700): it holds shared libraries that the daemon loads."""
    cache.mkdir(mode=0o700, parents=True, exist_ok=True)
    return cache


def lock_path(cache: Path, key: str) -> Path:
    return cache / f"{key}.lock"


def log_path(cache: Path, key: str) -> Path:
    return cache / f"{key}.log"


def sidecar_path(cache: Path, key: str) -> Path:
    return cache / f"{key}.json"


class PackageLock:
    """The exclusive right to build one package: an ``flock`` on ``KEY.lock``.

    :meth:`try_acquire` takes it or says that another process has it; the holder may hand its
    descriptor to a child (``pass_fds``), which then holds the lock alone once the parent closed
    its copy. :meth:`release` removes the file, then lets go; a process that opened the removed
    file meanwhile notices (another inode at the path) and tries again.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def try_acquire(cls, cache: Path, key: str) -> Optional["PackageLock"]:
        """The lock of ``key``, or None while another process holds it."""
        path = lock_path(ensure_cache_dir(cache), key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return None
                raise
            if _same_file(fd, path):
                return cls(path, fd)
            os.close(fd)  # released and removed by its holder after we opened it: once more

    @classmethod
    def adopt(cls, path: Path, fd: int) -> "PackageLock":
        """The lock a parent process handed over as descriptor ``fd``."""
        if not _same_file(fd, path):
            raise ValueError(f"descriptor {fd} is not the lock file {path}")
        return cls(path, fd)

    def write_owner(self, pid: int) -> None:
        """Record ``pid`` as the process that builds (``engine status`` and ``engine clear`` read it)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{pid}\n".encode(), 0)

    def close(self) -> None:
        """Close this process's descriptor only (after handing it to a child, which keeps the lock)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """Remove the lock file, then let go of the lock."""
        if self.fd < 0:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.close()


class BuildWaitTimeout(TimeoutError):
    """Another process has been building a package for longer than anyone waits."""


def acquire_unless_ready(cache: Path, key: str, ready: Callable[[], bool], timeout_s: float = BUILD_TIMEOUT_S,
                         poll_s: float = 0.1, on_wait: Optional[Callable[[int], None]] = None,
                         stopped: Callable[[], bool] = lambda: False) -> Optional[PackageLock]:
    """The lock of ``key`` for building it, or None as soon as ``ready()`` (the package is there).

    While another process builds ``key``, this waits for it (``on_wait(its pid)`` once), and
    takes the lock if that build ended without the package. None too when ``stopped()``;
    :class:`BuildWaitTimeout` after ``timeout_s`` of waiting.
    """
    deadline, announced = time.monotonic() + timeout_s, False
    while not ready() and not stopped():
        lock = PackageLock.try_acquire(cache, key)
        if lock is not None:
            if ready():  # built by the process that held the lock a moment ago
                lock.release()
                return None
            return lock
        if not announced and on_wait is not None:
            on_wait(lock_holder(cache, key) or 0)
            announced = True
        if time.monotonic() > deadline:
            raise BuildWaitTimeout(f"package {key} has been built by another process for more than {timeout_s:.0f} s")
        time.sleep(poll_s)
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def lock_holder(cache: Path, key: str) -> Optional[int]:
    """The pid of the process building ``key`` (0 when it has not written it yet), or None when
    nobody builds it."""
    path = lock_path(cache, key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None  # a stale lock file: its builder is gone
    finally:
        os.close(fd)


def _key_of(name: str) -> Optional[str]:
    """``KEY`` of a cache file's name (``KEY.pt2``, ``KEY.tmp-…``, ``KEY.lock``…), None for others."""
    key, dot, _ = name.partition(".")
    return key if dot and len(key) == 32 and all(c in "0123456789abcdef" for c in key) else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def clean_stale(cache: Path) -> List[Path]:
    """Remove what killed builds left (temporary files and lock files of keys nobody builds now,
    and the ``tmp*.pt2`` of earlier versions); the paths removed."""
    if not cache.is_dir():
        return []
    removed = []
    for path in sorted(cache.iterdir()):
        name, key = path.name, _key_of(path.name)
        if key is not None and name == f"{key}.lock":
            lock = PackageLock.try_acquire(cache, key)
            if lock is not None:  # nobody holds it: left by a killed build
                lock.release()
                removed.append(path)
        elif key is not None and TMP_MARK in name:
            if lock_holder(cache, key) is None:
                _remove(path)
                removed.append(path)
        elif key is None and name.startswith("tmp") and name.endswith(".pt2"):
            _remove(path)
            removed.append(path)
    return removed


@dataclass
class CacheEntry:
    """One key of the cache, as ``engine status`` shows it.

    state: ``ready`` (its package is there), ``building`` (a process holds its lock) or
    ``failed`` (its last build failed: ``error`` says why).
    """

    key: str
    state: str
    facts: Dict[str, object] = field(default_factory=dict)  # KEY.json: what it was built for
    size_bytes: int = 0
    modified: Optional[float] = None  # time.time() of the package (or of the build's start)
    builder_pid: Optional[int] = None
    error: Optional[str] = None


@dataclass
class Builder:
    """A process that builds a key now."""

    key: str
    pid: int
    since: Optional[float] = None  # time.time() when it took the lock


def read_last_line(path: Path) -> Optional[str]:
    """The last non-empty line of a text file (a build's log), or None."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 8192))
            lines = [line.strip() for line in file.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def _read_facts(cache: Path, key: str) -> Dict[str, object]:
    try:
        facts = json.loads(sidecar_path(cache, key).read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def cache_listing(cache: Path) -> List[CacheEntry]:
    """Every key of the cache: packages, builds in progress and failed builds, newest first."""
    if not cache.is_dir():
        return []
    keys = sorted({key for path in cache.iterdir() if (key := _key_of(path.name)) is not None})
    entries = []
    for key in keys:
        package, holder = cache / f"{key}.pt2", lock_holder(cache, key)
        facts = _read_facts(cache, key)
        if package.exists():
            stat = package.stat()
            entries.append(CacheEntry(key, "ready", facts, stat.st_size, stat.st_mtime, builder_pid=holder))
        elif holder is not None:
            since = _mtime(lock_path(cache, key))
            entries.append(CacheEntry(key, "building", facts, 0, since, builder_pid=holder))
        elif log_path(cache, key).exists():
            entries.append(CacheEntry(key, "failed", facts, 0, _mtime(log_path(cache, key)),
                                      error=read_last_line(log_path(cache, key))))
    return sorted(entries, key=lambda entry: entry.modified or 0.0, reverse=True)


def _mtime(path: Path) -> Optional[float]:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def running_builders(cache: Path) -> List[Builder]:
    """The processes that build a package of ``cache`` now (one per key)."""
    if not cache.is_dir():
        return []
    builders = []
    for path in sorted(cache.glob("*.lock")):
        key = _key_of(path.name)
        if key is not None and (pid := lock_holder(cache, key)) is not None:
            builders.append(Builder(key, pid, _mtime(path)))
    return builders


def stop_builders(cache: Path, timeout_s: float = 30.0,
                  sleep: Callable[[float], None] = time.sleep) -> List[Builder]:
    """Stop every process building into ``cache`` (SIGTERM to its process group when it leads
    one, as a background build does, so that its compiler processes stop too; SIGKILL after
    ``timeout_s``) and wait until their locks are free. The builders that were stopped."""
    builders = running_builders(cache)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for builder in builders:
            _signal_builder(builder.pid, signum)
        deadline = time.monotonic() + timeout_s
        while any(lock_holder(cache, b.key) is not None for b in builders) and time.monotonic() < deadline:
            sleep(0.05)
        if not any(lock_holder(cache, b.key) is not None for b in builders):
            break
    return builders


def _signal_builder(pid: int, signum: int) -> None:
    if pid <= 0 or pid == os.getpid():
        return
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def clear_cache(cache: Path) -> List[Path]:
    """Remove every file of the cache (the caller made sure that nobody builds); the paths removed."""
    if not cache.is_dir():
        return []
    removed = []
    for path in sorted(cache.iterdir()):
        key = _key_of(path.name)
        if key is not None and path.name == f"{key}.lock":
            lock = PackageLock.try_acquire(cache, key)
            if lock is None:  # a build started meanwhile: its files stay
                continue
            lock.release()
        elif key is not None and lock_holder(cache, key) is not None:
            continue
        _remove(path)
        removed.append(path)
    return removed
