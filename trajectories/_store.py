"""The run directory: resolved config, append-only trajectory shards, errors and stats.

    RUN/
      run.yaml                          the resolved config
      trajectories-<shard>-<n>.jsonl    one fsynced line per finished trajectory, spans filled (lines
                                        committed within a few ms of each other share one fsync)
      errors.jsonl                      (task, teacher) pairs that ended without a trajectory
      stats.json                        counts per teacher, replaced atomically
      .writer-<shard>.lock              flock(2)ed by the one process writing that shard slice

Each writer process opens a shard file of its own, named after its `--shard I/N`
and the first unused number `n`, and never appends to a file an earlier process
wrote. A crash can therefore only tear the last line of a shard; readers drop a
torn last line with a warning and refuse a corrupt line anywhere else. An exclusive
lock per `--shard` slice refuses a second writer of the same slice, so two
`--resume`s of one run never collect the same pairs twice.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, TypeVar

import yaml
from pydantic import ValidationError

from trajdistill.envs import ConfigError, TrajdistillError

from ._report import Report
from ._schema import SchemaVersionError, Trajectory
from ._spans import with_spans

R = TypeVar("R")

log = logging.getLogger(__name__)

RUN_FILE = "run.yaml"
ERRORS_FILE = "errors.jsonl"
STATS_FILE = "stats.json"
STATS_INTERVAL_S = 1.0
# Trajectories committed within this long of each other share one fsync (a few ms on a disk; free to wait
# for, since the collector plays the next episode meanwhile).
GROUP_WINDOW_S = 0.002
SHARD_GLOB = "trajectories-*.jsonl"
# Settings that may change on --resume: they say how to run, not what a trajectory is.
RUNTIME_KEYS = frozenset({"out", "tasks", "concurrency", "resume", "shard", "sandbox", "package_version",
                          "teachers", "teacher"})
TEACHER_KEYS = ("teachers", "teacher")


def run_key(traj: Trajectory) -> tuple[str, ...]:
    """What a run holds once: (task, teacher), and the sample index when a pair was sampled several
    times (`teacher.sampling["sample"]`, as self-distillation's replay buffer writes)."""
    sample = traj.teacher.sampling.get("sample")
    return traj.key if sample is None else (*traj.key, str(sample))


class TeacherStats(Report):
    """Counts of one teacher's pairs (or of the whole run): `errors` are pairs errored and not redone since."""

    done: int = 0
    success: int = 0
    errors: int = 0
    steps: int = 0
    tokens: int = 0


class RunStats(Report):
    """What stats.json holds."""

    teachers: dict[str, TeacherStats]
    total: TeacherStats
    updated_at: float


class RunError(TrajdistillError, ValueError):
    """The run directory is missing, corrupt, or does not match the requested config."""


def read_result(path: str | Path, build: Callable[[Any], R], what: str) -> R:
    """`build` of the JSON object in `path`, a result file that a command wrote. A file that is missing, is not
    JSON or is not `what` (`build` fails: a field missing or of the wrong type) is one RunError line."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise RunError(f"{path} cannot be read: {e.strerror or e}") from None
    except ValueError as e:  # not JSON, or not UTF-8
        raise RunError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RunError(f"{path} is not {what}: it holds a JSON {type(doc).__name__}, not an object")
    try:
        return build(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        why = f"it has no {e.args[0]!r} field" if isinstance(e, KeyError) else str(e)
        raise RunError(f"{path} is not {what}: {why}") from None


class OutputError(ConfigError):
    """An output path would destroy an input, would overwrite a file without `force`, or cannot be written."""


def check_output(out: str | Path, inputs: Iterable[str | Path] = (), *, force: bool = False,
                 kind: Literal["file", "dir"] = "file") -> Path:
    """Refuse `out` before anything is read or written: inside (or, for a directory, above) an input, an existing
    file without `force`, or a place where nothing can be created. Checking creates nothing; returns `out`."""
    out = Path(out)
    target = out.resolve()
    for src in (Path(p).resolve() for p in inputs):
        if target == src or src in target.parents:
            raise OutputError(f"--out {out} is inside the input {src}; write the output elsewhere")
        if kind == "dir" and target in src.parents:
            raise OutputError(f"--out {out} holds the input {src}; write the output elsewhere")
    if target.is_dir() and kind == "file":
        raise OutputError(f"--out {out} is a directory; give a file path")
    if target.exists() and not target.is_dir() and (kind == "dir" or not force):
        why = "is a file; give a directory" if kind == "dir" else "exists; pass --force to overwrite it"
        raise OutputError(f"--out {out} {why}")
    _check_creatable(out, target)
    return out


def _check_creatable(out: Path, target: Path) -> None:
    """A probe file in the nearest existing directory: root passes access(2) where the kernel still says no."""
    parent = target if target.is_dir() else target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"--out {out}: {parent} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OutputError(f"cannot write --out {out}: {e.strerror or e} in {parent}") from None


class RunStore:
    """One run directory. `create` for writing (collect, compose), `open` for reading (inspect, export, train)."""

    def __init__(self, path: Path, config: dict[str, Any], *, writable: bool):
        self.path = Path(path)
        self.config = config
        self._writable = writable
        self._lock = threading.Lock()
        self._stats_written = float("-inf")
        self._fd: int | None = None
        self._lock_fd: int | None = None  # held while this store writes its shard slice
        self._shard_path: Path | None = None
        self._stats: dict[str, dict[str, int]] = {}
        self._error_keys: set[tuple[str, str]] = set()
        self._finished: set[tuple[str, str]] = set()
        self.group_window_s = GROUP_WINDOW_S
        self._group: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None  # the fsync lines now wait for
        self._group_tasks: set[asyncio.Task] = set()
        self.syncs = 0  # fsyncs of trajectory lines so far (one per append, one per group of commits)

    # ---- opening ---------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, config: dict[str, Any], *, resume: bool = False) -> "RunStore":
        """Start a run in `path`, or continue one with `resume` when its config is compatible."""
        path = Path(path)
        config = json.loads(json.dumps(config, default=str))  # plain YAML types: Paths, tuples become str, list
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} exists and is not a directory")
        _check_run_files(path)
        old = _read_config(path) if (path / RUN_FILE).exists() else None
        if old is None and path.is_dir() and any(path.iterdir()):
            raise RunError(f"{path} is not empty and holds no {RUN_FILE}; choose a new --out directory")
        if old is not None:
            config = _continue(path, old, config, resume)
        path.mkdir(parents=True, exist_ok=True)
        lock = _lock_slice(path, config)
        try:
            _atomic_write(path / RUN_FILE, yaml.safe_dump(config, sort_keys=False))
            store = cls(path, config, writable=True)
            store._lock_fd = lock
            store._load_counts()
        except BaseException:
            os.close(lock)
            raise
        return store

    @classmethod
    def open(cls, path: str | Path) -> "RunStore":
        """Open an existing run for reading."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} is a file, not a run directory")
        if not path.is_dir():
            raise RunError(f"run directory {path} does not exist")
        if not (path / RUN_FILE).exists():
            raise RunError(f"{path} is not a run directory (no {RUN_FILE})")
        _check_run_files(path, (RUN_FILE, ERRORS_FILE))  # readers never read stats.json
        return cls(path, _read_config(path), writable=False)

    # ---- writing ---------------------------------------------------------------------------------

    def append(self, traj: Trajectory) -> None:
        """Write one finished trajectory as one fsynced line.

        Thread-safe and safe from concurrent asyncio tasks; it blocks only for the write and the fsync.
        A trajectory without spans is written with the spans of the segmenter its env names.
        """
        line = _line(traj)
        with self._lock:
            fd = self._write(line)
            os.fsync(fd)
            self.syncs += 1
            self._counted(traj)

    async def commit(self, traj: Trajectory) -> None:
        """`append` for asyncio callers, with group commit: the line is written at once, and one fsync covers
        every line written within `group_window_s` of the first. Returns (and counts the trajectory in the
        stats) only after that fsync returned, so a trajectory reported finished is on disk."""
        line = _line(traj)
        with self._lock:
            fd = self._write(line)
        await self._group_sync(fd)
        with self._lock:
            self._counted(traj)

    def record_error(self, task_id: str, teacher: str, reason: str, kind: str = "error") -> None:
        """Note a pair that ended without a trajectory; `--resume` retries it, the line stays as history."""
        rec = {"task_id": task_id, "teacher": teacher, "reason": reason, "kind": kind, "time": time.time()}
        line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self._check_writable()
            fd = os.open(self.path / ERRORS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if _ends_torn(self.path / ERRORS_FILE):
                    _write_all(fd, b"\n")  # an earlier crash left half a line; keep ours separate
                _write_all(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._error_keys.add((task_id, teacher))
            self._teacher(teacher)
            self._maybe_write_stats()

    def write_stats(self) -> RunStats:
        """Recount everything on disk (all writers) and replace stats.json."""
        with self._lock:
            self._stats, self._finished, self._error_keys = {}, set(), set()
            self._load_counts()
            return self._write_stats_locked()

    def close(self) -> None:
        with self._lock:
            if self._writable:
                self._write_stats_locked()
            for name in ("_fd", "_lock_fd"):
                if getattr(self, name) is not None:
                    os.close(getattr(self, name))
                    setattr(self, name, None)

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- reading ---------------------------------------------------------------------------------

    def shards(self) -> list[Path]:
        return sorted(self.path.glob(SHARD_GLOB), key=lambda p: _natural(p.name))

    def iter_trajectories(self, *, dedupe: bool = True) -> Iterator[Trajectory]:
        """All trajectories, shard by shard. With `dedupe`, a repeated `run_key` keeps its first."""
        seen: set[tuple[str, ...]] = set()
        for shard in self.shards():
            for lineno, traj in _read_shard(shard):
                if dedupe and run_key(traj) in seen:
                    warnings.warn(f"{shard}:{lineno}: duplicate trajectory for task {traj.task_id!r} and teacher "
                                  f"{traj.teacher.spec!r}; keeping the first", RuntimeWarning, stacklevel=2)
                    continue
                seen.add(run_key(traj))
                yield traj

    def load(self, *, dedupe: bool = True) -> list[Trajectory]:
        return list(self.iter_trajectories(dedupe=dedupe))

    def finished_keys(self) -> set[tuple[str, str]]:
        """(task_id, teacher spec) pairs with a trajectory on disk; errored pairs are not finished."""
        return {t.key for t in self.iter_trajectories(dedupe=False)}

    def check_holds(self, *, split: str, env: str, env_version: str) -> None:
        """Refuse to add to a run whose trajectories were collected with another split, env or env version:
        run.yaml can be edited, the trajectories are what the run really holds."""
        want = {"split": split, "env": env, "env version": env_version}
        for shard in self.shards():
            # one process with one config wrote each shard, so its first trajectory speaks for all of it
            traj = next((t for _, t in _read_shard(shard)), None)
            if traj is None:
                continue
            have = {"split": traj.split, "env": traj.env.name, "env version": traj.env.version}
            for name, value in want.items():
                if have[name] != value:
                    raise RunError(f"cannot resume {self.path}: setting {name} differs ({shard.name} has "
                                   f"{have[name]!r}, now {value!r}); use a new --out")

    def errors(self) -> list[dict[str, Any]]:
        """Every errors.jsonl record, oldest first (retried pairs included)."""
        path = self.path / ERRORS_FILE
        if not path.exists():
            return []
        out = []
        for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{lineno}: skipping a torn error record", RuntimeWarning, stacklevel=2)
                continue
            out.append(rec)
        return out

    def unfinished_errors(self) -> list[dict[str, Any]]:
        """The latest error record of each (task_id, teacher) pair that has no trajectory: what a rerun retries."""
        done = self.finished_keys()
        latest = {(e["task_id"], e["teacher"]): e for e in self.errors()}
        return [e for key, e in latest.items() if key not in done]

    def stats(self) -> RunStats:
        """What stats.json holds, computed from disk."""
        if not self._writable:
            self._stats, self._finished, self._error_keys = {}, set(), set()
            self._load_counts()
        return self._stats_doc()

    # ---- internals ---------------------------------------------------------------------------------

    def _write(self, line: bytes) -> int:
        """Write one whole line to this writer's shard (the caller holds the lock); returns its fd."""
        self._check_writable()
        if self._fd is None:
            self._fd, self._shard_path = _claim_shard(self.path, _shard_label(self.config))
        _write_all(self._fd, line)
        return self._fd

    def _counted(self, traj: Trajectory) -> None:
        self._count(traj)
        self._maybe_write_stats()

    async def _group_sync(self, fd: int) -> None:
        """Wait for an fsync of `fd` that starts after the caller's write: the open group's, else a new one's."""
        loop = asyncio.get_running_loop()
        if self._group is None or self._group[0] is not loop:
            self._group = (loop, loop.create_future())
            task = loop.create_task(self._sync_group(fd, self._group[1]))
            self._group_tasks.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._group_tasks.discard)
        await asyncio.shield(self._group[1])  # one cancelled waiter must not fail its group

    async def _sync_group(self, fd: int, done: asyncio.Future) -> None:
        try:
            await asyncio.sleep(self.group_window_s)
            self._end_group(done)  # lines written from here on wait for the next fsync
            await asyncio.to_thread(os.fsync, fd)
        except asyncio.CancelledError:
            self._end_group(done)
            done.cancel()
            raise
        except OSError as e:  # a full or failing disk: every waiter of this group raises it
            self._end_group(done)
            done.set_exception(e)
        else:
            with self._lock:
                self.syncs += 1
            done.set_result(None)

    def _end_group(self, done: asyncio.Future) -> None:
        if self._group is not None and self._group[1] is done:
            self._group = None

    def _check_writable(self) -> None:
        if not self._writable:
            raise RunError(f"{self.path} was opened for reading; use RunStore.create(..., resume=True) to add to it")

    def _teacher(self, spec: str) -> dict[str, int]:
        return self._stats.setdefault(spec, {"done": 0, "success": 0, "errors": 0, "steps": 0, "tokens": 0})

    def _count(self, traj: Trajectory) -> None:
        s = self._teacher(traj.teacher.spec)
        s["done"] += 1
        s["success"] += int(traj.outcome.success)
        s["steps"] += traj.usage.steps
        s["tokens"] += traj.usage.total_tokens
        self._finished.add(traj.key)

    def _load_counts(self) -> None:
        for traj in self.iter_trajectories():
            self._count(traj)
        for rec in self.errors():
            self._error_keys.add((rec.get("task_id", ""), rec.get("teacher", "")))
            self._teacher(rec.get("teacher", ""))

    def _stats_doc(self) -> RunStats:
        pending = defaultdict(int)
        for key in self._error_keys - self._finished:
            pending[key[1]] += 1
        teachers = {spec: TeacherStats(**dict(s, errors=pending[spec])) for spec, s in sorted(self._stats.items())}
        total = {k: sum(getattr(s, k) for s in teachers.values()) for k in TeacherStats.model_fields}
        return RunStats(teachers=teachers, total=TeacherStats(**total), updated_at=time.time())

    def _maybe_write_stats(self) -> None:
        # stats.json is a convenience view recomputable from disk: refresh it at most once a second.
        if time.monotonic() - self._stats_written >= STATS_INTERVAL_S:
            self._write_stats_locked()

    def _write_stats_locked(self) -> RunStats:
        self._stats_written = time.monotonic()
        stats = self._stats_doc()
        _atomic_write(self.path / STATS_FILE, json.dumps(stats.doc(), indent=2) + "\n")
        return stats


# ---- config ------------------------------------------------------------------------------------------


def _check_run_files(path: Path, names: tuple[str, ...] = (RUN_FILE, ERRORS_FILE, STATS_FILE)) -> None:
    for name in names:
        if (path / name).is_dir():
            raise RunError(f"{path / name} is a directory, not the run's {name} file; move it away to use this run")


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((path / RUN_FILE).read_text())
    except yaml.YAMLError as e:
        raise RunError(f"{path / RUN_FILE} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RunError(f"{path / RUN_FILE} must hold a mapping of setting: value")
    return data


def _continue(path: Path, old: dict[str, Any], new: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The config to write when `path` already holds a run; refuses what would mix two different runs."""
    own_shard = list(path.glob(f"trajectories-{_shard_label(new)}-*.jsonl"))
    if not resume and (own_shard or _shard_count(new) == 1):
        raise RunError(f"run dir {path} exists; pass --resume to continue it or choose a new --out")
    diff = setting_difference(old, new)
    if diff is not None:
        raise RunError(f"cannot resume {path}: setting {diff}; use a new --out")
    merged = dict(new)
    for k in TEACHER_KEYS:
        if isinstance(old.get(k), list) and isinstance(new.get(k), list):
            merged[k] = old[k] + [t for t in new[k] if t not in old[k]]  # teachers may be added
    return merged


def setting_difference(old: dict[str, Any], new: dict[str, Any],
                       ignore: frozenset[str] = RUNTIME_KEYS) -> str | None:
    """`'name' differs (run has A, now B)` for the first setting that differs (top-level `ignore` keys aside),
    or None: what refuses a resume whose settings changed."""
    key = _first_difference(old, new, ignore)
    return None if key is None else f"{key!r} differs (run has {_lookup(old, key)}, now {_lookup(new, key)})"


def _first_difference(old: Any, new: Any, ignore: frozenset[str], prefix: str = "") -> str | None:
    """The dotted name of the first setting that differs, ignoring `ignore` at the top level."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if not prefix and k in ignore:
                continue
            name = f"{prefix}{k}"
            if k not in old or k not in new:
                return name
            found = _first_difference(old[k], new[k], ignore, name + ".")
            if found is not None:
                return found
        return None
    return None if old == new else prefix.rstrip(".")


def _lookup(cfg: dict[str, Any], dotted: str) -> str:
    """The setting's value for an error message, or `unset`."""
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return "unset"
        cfg = cfg[part]
    return repr(cfg)


def _shard_count(config: dict[str, Any]) -> int:
    _, _, n = str(config.get("shard", "0/1")).partition("/")
    return int(n) if n.isdigit() else 1


def _shard_label(config: dict[str, Any]) -> str:
    """`--shard 2/4` writes trajectories-2of4-<n>.jsonl."""
    label = str(config.get("shard", "0/1")).replace("/", "of")
    return re.sub(r"[^A-Za-z0-9_.]", "_", label)


# ---- files -------------------------------------------------------------------------------------------


def _lock_slice(run: Path, config: dict[str, Any]) -> int:
    """An exclusive, non-blocking flock for this `--shard` slice; the kernel drops it when the writer dies."""
    fd = os.open(run / f".writer-{_shard_label(config)}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        raise RunError(f"another process is writing shard {config.get('shard', '0/1')} of {run}; wait for it to "
                       "finish, or write another --shard") from None
    return fd


def _claim_shard(run: Path, label: str) -> tuple[int, Path]:
    """Create the next unused shard file for this writer; O_EXCL so two processes never share one."""
    taken = [int(m.group(1)) for p in run.glob(f"trajectories-{label}-*.jsonl")
             if (m := re.fullmatch(rf"trajectories-{re.escape(label)}-(\d+)\.jsonl", p.name))]
    n = max(taken, default=-1) + 1
    while True:
        path = run / f"trajectories-{label}-{n:03d}.jsonl"
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644), path
        except FileExistsError:
            n += 1


def _line(traj: Trajectory) -> bytes:
    return (with_spans(traj).to_json() + "\n").encode()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ends_torn(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _natural(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _read_shard(path: Path) -> Iterator[tuple[int, Trajectory]]:
    """(line number, trajectory) for each line; a torn last line is dropped with a warning."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = data.endswith(b"\n") or not data
    if complete:
        lines = lines[:-1]  # the empty string after the final newline
    last = len(lines)
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        torn_tail = lineno == last and not complete
        try:
            traj = Trajectory.from_json(raw.decode())
        except SchemaVersionError as e:
            raise RunError(f"{path}:{lineno}: {e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if lineno == last:
                _warn_torn(path, lineno, "is incomplete" if torn_tail else f"is not valid JSON ({e})")
                return
            raise RunError(f"{path}:{lineno}: corrupt line, not valid JSON ({e}); the run needs repair") from None
        except ValidationError as e:
            if torn_tail:
                _warn_torn(path, lineno, "is incomplete")
                return
            first = str(e).splitlines()
            raise RunError(f"{path}:{lineno}: not a valid trajectory ({' '.join(first[:3])})") from None
        if torn_tail:
            # Valid JSON cut exactly at a value boundary is still a line whose write did not finish.
            _warn_torn(path, lineno, "has no trailing newline")
            return
        yield lineno, traj


def _warn_torn(path: Path, lineno: int, why: str) -> None:
    msg = f"{path}:{lineno}: dropping the torn last line (it {why}); an interrupted write left it"
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
