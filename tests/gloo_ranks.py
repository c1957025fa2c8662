"""Run a function on N CPU ranks (gloo) forked from the pytest process, with a hard timeout.

Why fork: importing torch + megatron-core costs ~15 s per rank when 4 ranks start on 2 cores; forking from the
parent that already imported them starts a rank in milliseconds. Why a FileStore: no ports to collide between
concurrent test runs. Why a hard deadline: a hung collective must fail the test, never stall CI.

Each rank's stdout/stderr goes to its own log; a failing or hanging job is reported with every rank's state and
log tail in pytest's output.
"""

from __future__ import annotations

import datetime
import multiprocessing as mp
import os
import pickle
import signal
import tempfile
import time
import traceback
from pathlib import Path


class RankFailure(AssertionError):
    """One or more ranks raised, died or missed the deadline."""


def _child(rank, world_size, fn, args, env, store_path, log_path, conn, timeout):
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    status = ("error", "rank did not report")
    try:
        import torch
        import torch.distributed as dist

        from megatron_truncdistill.runtime import enable_cpu_runtime

        torch.set_num_threads(1)  # ranks share 2 cores; also keeps the forked OpenMP pool out of play
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                           "LOCAL_WORLD_SIZE": str(world_size), **env})
        enable_cpu_runtime()
        store = dist.FileStore(store_path, world_size)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        result = fn(*args)
        status = ("ok", result)
    except BaseException:  # report everything, including SystemExit from code under test
        status = ("error", traceback.format_exc())
    try:
        conn.send_bytes(pickle.dumps(status))
    except Exception:
        conn.send_bytes(pickle.dumps(("error", "result not picklable:\n" + traceback.format_exc())))
    os._exit(0)  # skip pytest's atexit handlers and gloo teardown (peers may already be gone)


def _tail(path: str, limit: int = 3000) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "<no log>"
    return text[-limit:]


def run_gloo_ranks(fn, world_size: int, *args, timeout: float = 120.0, env: dict | None = None) -> list:
    """Run ``fn(*args)`` on ``world_size`` forked gloo ranks; return the per-rank results in rank order.

    ``fn`` runs after ``torch.distributed`` is initialized (env RANK/WORLD_SIZE set, CPU runtime on); megatron's
    ``parallel_state`` is for ``fn`` to initialize. Raises RankFailure naming each failed/hung rank with its log.
    """
    ctx = mp.get_context("fork")
    workdir = tempfile.mkdtemp(prefix="gloo_ranks_")
    store_path = os.path.join(workdir, "store")
    procs, conns, logs = [], [], []
    for rank in range(world_size):
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        log_path = os.path.join(workdir, f"rank{rank}.log")
        proc = ctx.Process(target=_child, args=(rank, world_size, fn, args, env or {}, store_path, log_path,
                                                child_conn, timeout))
        proc.start()
        child_conn.close()
        procs.append(proc)
        conns.append(parent_conn)
        logs.append(log_path)
    results = _collect(procs, conns, deadline=time.monotonic() + timeout)
    failed = [r for r, res in enumerate(results) if res[0] != "ok"]
    if failed:
        report = [f"{len(failed)} of {world_size} ranks failed (timeout {timeout:.0f}s, logs in {workdir}):"]
        for rank in range(world_size):
            state, payload = results[rank]
            report.append(f"--- rank {rank}: {state}")
            if state != "ok":
                report.append(str(payload).rstrip())
                report.append(f"--- rank {rank} log tail:\n{_tail(logs[rank])}")
        raise RankFailure("\n".join(report))
    return [payload for _, payload in results]


def _collect(procs, conns, *, deadline: float) -> list:
    """Wait for every rank's report until the deadline; on any error or timeout kill the rest at once."""
    results = [None] * len(procs)
    pending = set(range(len(procs)))
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for r in pending:
                results[r] = ("timeout", "no result before the deadline (hung collective?)")
            break
        ready = mp.connection.wait([conns[r] for r in pending], timeout=min(remaining, 1.0))
        for conn in ready:
            rank = conns.index(conn)
            try:
                results[rank] = pickle.loads(conn.recv_bytes())
            except EOFError:
                code = procs[rank].exitcode
                results[rank] = ("died", f"process exited without a report (exit code {code})")
            pending.discard(rank)
            if results[rank][0] != "ok":  # peers are likely blocked in a collective with the dead rank
                for r in pending:
                    results[r] = ("aborted", "killed after another rank failed")
                pending.clear()
                break
    for proc in procs:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    return results
