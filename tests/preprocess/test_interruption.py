"""``kill -9`` of a preprocessing run: its workers and multiprocessing's resource tracker exit with it, and the next
run to the same prefix removes the partial output it left (only that prefix's, only once its writer is gone)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def _feed_fifo(fifo: Path, lines: list[bytes], stop: threading.Event) -> threading.Thread:
    """Write ``lines`` into the FIFO and keep it open (the run then waits for more input) until ``stop``."""
    def feed():
        with open(fifo, "wb") as f:
            f.write(b"".join(lines))
            f.flush()
            stop.wait(120)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_kill_9_takes_workers_and_resource_tracker_along(tmp_path, traces, qwen3_dir):
    fifo = tmp_path / "input.jsonl"
    os.mkfifo(fifo)
    rows = traces.short_rows(traces.r1, 4)
    stop = threading.Event()
    feeder = _feed_fifo(fifo, [(json.dumps(r) + "\n").encode() for r in rows], stop)
    prefix = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "preprocess.py"), "--input", str(fifo),
                             "--output-prefix", str(prefix), "--tokenizer", qwen3_dir, "--workers", "2",
                             "--chunk-docs", "1", "--no-progress"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    parent = psutil.Process(proc.pid)
    children: list[psutil.Process] = []
    try:
        def workers_up() -> bool:
            children[:] = parent.children(recursive=True)
            lines = [" ".join(c.cmdline()) for c in children]
            return sum("multiprocessing.spawn" in x for x in lines) >= 2 and any("resource_tracker" in x for x in lines)

        _wait(workers_up, 120, "2 workers and the resource tracker")
        time.sleep(3.0)  # let the workers load their tokenizer and take their chunks
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        _wait(lambda: not any(_alive(c) for c in children), 30, "the orphaned workers and resource tracker to exit")
    finally:
        stop.set()
        feeder.join(5)
        for child in children:
            if _alive(child):
                child.kill()
    partial = tmp_path / f".out.partial-{proc.pid}"
    assert (partial / "writer.json").is_file()  # SIGKILL leaves the partial output behind

    good = traces.write_jsonl(tmp_path / "good.jsonl", rows[:1])
    done = subprocess.run([sys.executable, str(REPO / "tools" / "preprocess.py"), "--input", str(good),
                           "--output-prefix", str(prefix), "--tokenizer", qwen3_dir],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert not partial.exists()
    assert f"removed {partial}: the partial output of a killed run to this prefix" in done.stderr


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _partial(tmp_path: Path, name: str, pid: int, writer: dict | None) -> Path:
    directory = tmp_path / f".{name}.partial-{pid}"
    directory.mkdir()
    (directory / "out_tokens.bin").write_bytes(b"\0" * 16)
    if writer is not None:
        (directory / "writer.json").write_text(json.dumps(writer))
    return directory


def test_stale_partials_of_this_prefix_are_removed_live_and_foreign_ones_kept(tmp_path, traces, preprocess):
    import socket

    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = psutil.Process(sleeper.pid)
        dead = _dead_pid()
        shell = psutil.Process(os.getppid())
        stale = [_partial(tmp_path, "out", dead, None),  # old layout (no writer.json), writer gone
                 _partial(tmp_path, "out", dead + 100000, {"pid": dead + 100000, "host": host, "started": 0.0}),
                 # the pid is alive, but it is another process than the writer (pid reused)
                 _partial(tmp_path, "out", shell.pid, {"pid": shell.pid, "host": host,
                                                       "started": shell.create_time() - 1000})]
        kept = [_partial(tmp_path, "out_v2", dead, None),  # another prefix's
                _partial(tmp_path, "out", live.pid, {"pid": live.pid, "host": host, "started": live.create_time()}),
                _partial(tmp_path, "out", 1, None),  # old layout, pid alive: it may still be writing
                _partial(tmp_path, "out", dead + 200000, {"pid": dead + 200000, "host": host + "-elsewhere",
                                                          "started": 0.0})]  # another machine's: cannot tell
        src = traces.write_jsonl(tmp_path / "r1.jsonl", traces.short_rows(traces.r1, 1))
        preprocess([src], name="out")
        assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
        assert not list(tmp_path.glob(f".out.partial-{os.getpid()}"))  # its own is renamed away at the end
    finally:
        sleeper.kill()
        sleeper.wait()
