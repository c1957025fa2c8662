"""The preprocessing run: read → N worker processes → ordered write → manifest.

Records are grouped into chunks of ``chunk_docs``; chunks go to a process pool and come back in submission order, so
the output bytes do not depend on the worker count (1 worker runs in-process). At most ``4 × workers`` chunks are in
flight, which bounds memory whatever the corpus size (``Pool.imap`` would read the whole input ahead).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator

from megatron_truncdistill.preprocess.document import ChunkResult, DocumentProcessor, Job, Stats
from megatron_truncdistill.preprocess.manifest import build_manifest
from megatron_truncdistill.preprocess.readers import (InputError, RawRecord, Reader, expand_inputs, file_sha256,
                                                     input_files)
from megatron_truncdistill.preprocess.rendering import TemplateError
from megatron_truncdistill.errors import UserError
from megatron_truncdistill.sections import NO_SECTION
from megatron_truncdistill.tokenization import TokenizerError

if TYPE_CHECKING:
    from megatron_truncdistill.preprocess.writer import DatasetWriter


class PreprocessError(UserError):
    """A fatal problem, reported as one line naming the file (and line) and the fix."""


@dataclass(frozen=True)
class PreprocessConfig:
    """One run. ``job`` is what workers need; the rest is orchestration."""

    inputs: list[str]
    output_prefix: str
    job: Job
    protocol: str = "default"  # the --protocol preset the job was built with (recorded in the manifest)
    workers: int = 1
    chunk_docs: int = 64  # records per worker task: large enough to amortize IPC, small enough to keep order cheap
    strict: bool = False  # any reject fails the run (and writes nothing)
    overwrite: bool = False
    progress: bool = True


class Progress:
    """A one-line progress display on stderr: docs/s, tokens/s and an ETA from the input bytes consumed."""

    def __init__(self, total_bytes: int, *, enabled: bool) -> None:
        self.total_bytes, self.enabled = max(total_bytes, 1), enabled
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, stats: Stats, bytes_done: int, *, final: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < (0.5 if self.tty else 30.0)):
            return
        self.last, elapsed = now, max(now - self.start, 1e-9)
        tokens = int(stats.tokens_before.sum())
        frac = min(bytes_done / self.total_bytes, 1.0)
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        line = (f"{stats.read:,} docs ({stats.read / elapsed:,.0f}/s) | {tokens / 1e6:,.1f}M tokens "
                f"({tokens / elapsed / 1e6:,.2f}M/s) | {stats.written:,} written, {sum(stats.rejected.values()):,} "
                f"rejected | {100 * frac:.0f}% | ETA {eta:,.0f}s")
        end = "\n" if final or not self.tty else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)


def _chunks(records: Iterable[RawRecord], size: int) -> Iterator[list[RawRecord]]:
    chunk: list[RawRecord] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


_WORKER: DocumentProcessor | None = None


@contextlib.contextmanager
def _sigint_ignored():
    """Ctrl-C reaches the whole process group; only the parent should handle it (and print one line), so worker
    processes are spawned while SIGINT is ignored: they inherit that and never print a KeyboardInterrupt traceback."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive its parent: ``kill -9`` of the run runs no cleanup, and the pool's queues keep an
    orphaned worker (and, through it, multiprocessing's resource tracker) waiting forever. On Linux the kernel sends
    SIGKILL when the parent dies (PR_SET_PDEATHSIG); a watchdog thread covers other platforms, and the check after
    prctl covers a parent that died before it ran. (The kernel signal follows the parent *thread* that spawned the
    worker: ``ordered_results`` creates, feeds and shuts down its pool in one thread, the one iterating it.)"""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:  # an orphan is re-parented, so its parent pid changes
        time.sleep(1.0)
    os._exit(1)


def _init_worker(job: Job, parent_pid: int) -> None:
    global _WORKER  # one processor per worker process, built once (tokenizer load + template probe)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also when spawned outside _sigint_ignored (not the main thread)
    _exit_with_parent(parent_pid)
    # one tokenizing thread per worker: parallelism comes from the workers, the Rust pool would oversubscribe
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER = DocumentProcessor(job)


def _process(chunk: list[RawRecord]) -> ChunkResult:
    return _WORKER.process(chunk)


def ordered_results(processor: DocumentProcessor, chunks: Iterable[list[RawRecord]], workers: int
                    ) -> Iterator[ChunkResult]:
    """Process chunks with ``workers`` processes, yielding results in input order with a bounded window.

    One worker runs in this process with ``processor``; more start a pool whose workers build their own from
    ``processor.job``. A worker that dies (e.g. OOM-killed) raises BrokenProcessPool instead of hanging the run.
    """
    if workers == 1:
        yield from map(processor.process, chunks)
        return
    # spawn, not fork: the parent holds torch/megatron state that children must not inherit.
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(processor.job, os.getpid()))
    try:
        pending: deque = deque()
        chunks = iter(chunks)
        with _sigint_ignored():  # the first submits spawn the workers, which inherit "ignore SIGINT" while importing
            pending.extend(pool.submit(_process, chunk) for chunk in itertools.islice(chunks, workers))
        for chunk in chunks:
            pending.append(pool.submit(_process, chunk))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as err:
        raise PreprocessError(f"a worker process died ({err}), most likely killed by the system for lack of memory; "
                              "rerun with fewer --workers or a smaller --chunk-docs") from err
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _describe_inputs(paths) -> list[dict]:
    return [{"path": str(p), "files": [{"name": f.name, "bytes": f.stat().st_size, "sha256": file_sha256(f)}
                                       for f in input_files(p)]} for p in paths]


def _strict_failure(chunk: ChunkResult) -> PreprocessError:
    r = chunk.rejects[0]
    where = f"{r['source']}:{r.get('line', r.get('row'))}"
    return PreprocessError(f"{where}: rejected ({r['reason']}: {r['detail']}); --strict fails on any reject: "
                           "fix the record or drop --strict")


def _stream(cfg: PreprocessConfig, processor: DocumentProcessor, reader: Reader, writer: DatasetWriter) -> Stats:
    stats, progress = Stats(), Progress(reader.total_bytes, enabled=cfg.progress)
    for chunk in ordered_results(processor, _chunks(reader, cfg.chunk_docs), cfg.workers):
        if cfg.strict and chunk.rejects:
            raise _strict_failure(chunk)
        writer.add(chunk)
        stats.merge(chunk.stats)
        progress.update(stats, reader.bytes_done)
    progress.update(stats, reader.total_bytes, final=True)
    if stats.written == 0:
        raise PreprocessError(f"no record was written ({stats.read} read, rejected: {dict(stats.rejected)}); "
                              "check --format and the field options")
    return stats


def _open(cfg: PreprocessConfig) -> tuple[list, DocumentProcessor, Reader, "DatasetWriter"]:
    """Check inputs, tokenizer and template, then create the output: fatal problems surface before any file exists."""
    try:
        paths = expand_inputs(cfg.inputs)
        probe = DocumentProcessor(cfg.job)
        reader = Reader(paths)
    except (InputError, TokenizerError, TemplateError) as err:
        raise PreprocessError(str(err)) from err
    # Imported only now: the writer pulls in torch and megatron-core (seconds), which neither an early error nor the
    # spawned workers (they re-import the entry module) should pay for.
    from megatron_truncdistill.preprocess.writer import DatasetWriter, OutputError

    try:
        writer = DatasetWriter(cfg.output_prefix, vocab_size=probe.tok.vocab_size, overwrite=cfg.overwrite)
    except OutputError as err:
        raise PreprocessError(str(err)) from err
    for stale in writer.removed_stale if cfg.progress else ():
        print(f"removed {stale}: the partial output of a killed run to this prefix", file=sys.stderr)
    return paths, probe, reader, writer


def _settings(cfg: PreprocessConfig, probe: DocumentProcessor) -> dict:
    """The manifest's record of how the documents were made (README.md here: the manifest's fields)."""
    eod = None if probe.eod is None else {"token": probe.eod[0], "id": probe.eod[1], "section_code": NO_SECTION}
    return {"protocol": cfg.protocol, "chat_layout": probe.layout.to_json(),
            "records": dataclasses.asdict(cfg.job.spec),
            "truncation": {**cfg.job.policy.to_json(), "generation_prompt_tokens": probe.tail},
            "filters": dataclasses.asdict(cfg.job.filters), "eod": eod}


def run(cfg: PreprocessConfig) -> dict:
    """Run the whole job; returns the manifest. Raises PreprocessError for anything fatal, leaving no output."""
    start = time.perf_counter()
    paths, probe, reader, writer = _open(cfg)
    try:
        stats = _stream(cfg, probe, reader, writer)
        manifest = build_manifest(inputs=_describe_inputs(paths), tok=probe.tok, settings=_settings(cfg, probe),
                                  stats=stats, wall_s=time.perf_counter() - start, workers=cfg.workers,
                                  token_dtype=writer.token_dtype.__name__)
        writer.commit(manifest)
        return manifest
    except InputError as err:
        writer.abort()
        raise PreprocessError(str(err)) from err
    except BaseException:
        writer.abort()
        raise
