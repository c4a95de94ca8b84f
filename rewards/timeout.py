"""Bounded time for every expensive check: persistent worker processes with per-item deadlines.

Why not `signal.alarm`: it works only in the main thread (Math-Verify issues #11, #42, #50, #55),
and cannot interrupt a C-level bigint operation (#63, #65). Why not one process per check: a
process start costs ~0.5 s with sympy. So (`checker.md` §6):
- a pool of persistent workers (`rewards.worker`), sized to the CPUs, started lazily;
- a batch is sent to a worker in one message; the worker streams one result per item; the caller
  waits for each with its own deadline using `select` (works in any thread, Ray actors included);
- on overrun the worker's process group is SIGKILLed, the item is a `timeout`, a fresh worker is
  started and the rest of the batch continues on it. A crashed worker gives `error` items.
The cheap checks never come here (`check.py` decides them in the caller's process), so the common
numeric case pays no round trip.

Each worker runs in its own session (`start_new_session`) and exits when its stdin closes, so no
worker outlives its parent process for long.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

READY_TIMEOUT = 120.0
"""Seconds a new worker may take to import sympy and report ready (slow on a loaded 2-core box)."""

PROGRAM_SLACK = 2.0
"""Extra seconds the caller allows on top of a program's own limit (the worker enforces that one)."""

_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = f"import sys; sys.path.insert(0, {_ROOT!r}); from rewards.worker import main; main()"


class WorkerDied(RuntimeError):
    """The worker process exited (crash or kill) while a result was awaited."""


class Worker:
    """One worker process and its line-oriented JSON pipe."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._stdin, self._stdout = self.proc.stdin, self.proc.stdout
        self.owner = os.getpid()  # a forked child must never kill its parent's workers
        self._fd = self._stdout.fileno()
        self._buf = b""
        self.ready = False
        _ALL_WORKERS.add(self)

    def readline(self, deadline: float) -> bytes | None:
        """Next line, or None if the deadline passes first; WorkerDied on EOF."""
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                raise WorkerDied(f"worker {self.proc.pid} exited with {self.proc.poll()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        if self.ready:
            return
        line = self.readline(time.monotonic() + timeout)
        if line is None:
            raise WorkerDied("worker did not start in time")
        if json.loads(line).get("op") != "ready":
            raise WorkerDied("unexpected first message from worker")
        self.ready = True

    def send(self, obj: dict[str, Any]) -> None:
        try:
            self._stdin.write((json.dumps(obj) + "\n").encode())
            self._stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise WorkerDied(f"cannot write to worker: {e}") from None

    def kill(self) -> None:
        """SIGKILL the worker's whole process group and reap it."""
        if self.owner != os.getpid():
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (self._stdin, self._stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        _ALL_WORKERS.discard(self)


_ALL_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()


def task_deadline(task: dict[str, Any]) -> float:
    """Seconds the caller waits for one task's result."""
    limit = float(task.get("timeout", 5.0))
    return limit + PROGRAM_SLACK if task.get("kind") == "program" else limit


def _failed(status: str, error: str, seconds: float) -> dict[str, Any]:
    return {"status": status, "extracted": None, "error": error, "seconds": seconds}


class WorkerPool:
    """Persistent worker processes, at most `size` alive; thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._cond = threading.Condition()
        self._idle: list[Worker] = []
        self._count = 0
        self._closed = False
        self.kills = 0
        """Workers killed after a deadline overrun (for metrics and tests)."""

    def acquire(self) -> Worker:
        with self._cond:
            while not self._idle and self._count >= self.size:
                self._cond.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return Worker()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def release(self, worker: Worker, broken: bool = False) -> None:
        with self._cond:
            if broken or self._closed or worker.proc.poll() is not None:
                self._count -= 1
                kill = True
            else:
                self._idle.append(worker)
                kill = False
            self._cond.notify()
        if kill:
            worker.kill()

    def warmup(self, n: int | None = None) -> None:
        """Start up to `n` (default: size) workers now and wait until they are ready."""
        workers = [self.acquire() for _ in range(min(n or self.size, self.size))]
        try:
            for w in workers:
                w.wait_ready()
        finally:
            for w in workers:
                self.release(w, broken=not w.ready)

    def _run_chunk(self, chunk: list[tuple[int, dict[str, Any]]], results: list[Any]) -> None:
        pending = chunk
        start_failures = 0
        while pending:
            worker = self.acquire()
            broken = True
            try:
                try:
                    worker.wait_ready()
                except (WorkerDied, ValueError) as e:
                    start_failures += 1
                    if start_failures >= 2:
                        for idx, _ in pending:
                            results[idx] = _failed("error", f"reward worker failed to start: {e}", 0.0)
                        return
                    continue
                worker.send({"op": "batch", "tasks": [t for _, t in pending]})
                done = 0
                overrun = False
                for idx, task in pending:
                    t0 = time.monotonic()
                    limit = task_deadline(task)
                    try:
                        line = worker.readline(t0 + limit)
                    except WorkerDied as e:
                        results[idx] = _failed("error", f"reward worker crashed: {e}", time.monotonic() - t0)
                        done += 1
                        overrun = True
                        break
                    if line is None:  # overran: kill, replace, continue with the rest
                        results[idx] = _failed("timeout", f"check exceeded {limit:g}s", time.monotonic() - t0)
                        done += 1
                        self.kills += 1
                        overrun = True
                        break
                    results[idx] = json.loads(line)
                    done += 1
                pending = pending[done:]
                broken = overrun  # a worker that overran is still busy (or dead): never reuse it
            finally:
                self.release(worker, broken=broken)

    def run(self, tasks: list[dict[str, Any]], workers: int | None = None) -> list[dict[str, Any]]:
        """Run tasks on up to `workers` processes in parallel; results in input order."""
        n = len(tasks)
        results: list[Any] = [None] * n
        if n == 0:
            return results
        parallel = max(1, min(workers or self.size, self.size, n))
        size = max(1, min(64, -(-n // (parallel * 4))))
        chunks = [list(enumerate(tasks))[k:k + size] for k in range(0, n, size)]
        if parallel == 1 or len(chunks) == 1:
            for chunk in chunks:
                self._run_chunk(chunk, results)
            return results
        work: queue.SimpleQueue[list[tuple[int, dict[str, Any]]]] = queue.SimpleQueue()
        for chunk in chunks:
            work.put(chunk)
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                while True:
                    try:
                        chunk = work.get_nowait()
                    except queue.Empty:
                        return
                    self._run_chunk(chunk, results)
            except BaseException as e:  # surfaced to the caller below
                errors.append(e)

        threads = [threading.Thread(target=loop, daemon=True, name=f"rlft-reward-{k}") for k in range(parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.kill()


_POOL: WorkerPool | None = None
_POOL_PID: int | None = None
_POOL_LOCK = threading.Lock()


def default_pool_size() -> int:
    """`RLFT_REWARD_WORKERS` if set, else the CPUs this process may run on."""
    env = os.environ.get("RLFT_REWARD_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def get_pool(size: int | None = None) -> WorkerPool:
    """The process-wide pool (a forked child gets its own); grows to `size` if asked."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():
            _POOL = WorkerPool(size or default_pool_size())
            _POOL_PID = os.getpid()
        elif size is not None and size > _POOL.size:
            with _POOL._cond:
                _POOL.size = size
        return _POOL


def shutdown() -> None:
    """Kill every worker this process started (also registered with atexit)."""
    global _POOL
    with _POOL_LOCK:
        pool, _POOL = _POOL, None
    if pool is not None and _POOL_PID == os.getpid():
        pool.close()
    for w in list(_ALL_WORKERS):
        w.kill()


atexit.register(shutdown)
