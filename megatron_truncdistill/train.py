"""Entry point: ``torchrun --nproc-per-node N -m megatron_truncdistill.train --config RUN.yaml [key=value ...]``.

``run_training(config)`` reads top to bottom as the whole job: check, build, (resume), loop, save.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import warnings
from contextlib import contextmanager

import torch
import torch.distributed as dist
import yaml

from megatron_truncdistill.config import Config, load_config
from megatron_truncdistill.errors import cli_main


class _StopFlag:
    """Set by SIGTERM (preemption); ranks agree on it with one all-reduce per step so all stop at the same step."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "requested", True))

    def agreed(self, device: torch.device) -> bool:
        """Collective over the default group (the device's backend): whether any rank was asked to stop."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())  # this is a CPU-GPU sync point


def run_training(config: Config, *, stop: _StopFlag | None = None) -> dict:
    """The job, on an initialized default process group. Returns the last step's record (every rank)."""
    from megatron_truncdistill.training.assembly import build_training_run

    run = build_training_run(config)
    try:
        return run.train(stop or _StopFlag())
    finally:
        run.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def distributed_session():
    """Initialize the default group from torchrun's environment (or as a single process without torchrun).

    An already initialized group (a test harness, a notebook) is used as it is and left to its owner.
    """
    if dist.is_initialized():
        yield
        return
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    from megatron_truncdistill.parallel import local_device  # megatron-core: imported once a run starts

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        local_device()  # NCCL binds each rank to the current device: make it this rank's GPU first
    elif "OMP_NUM_THREADS" not in os.environ:  # an explicit thread count (torchrun sets 1) wins
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    dist.init_process_group(backend)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="run YAML (see examples/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. "
                        "parallel.tensor_model_parallel_size=2")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """A user error (a config key, a missing file, a diverged run) is one ``error:`` line per rank and exit 2."""
    # megatron-core warns at import that TE/apex are missing; expected off the NGC container, and once per rank
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex|apex).*")
    args = _parse(argv)
    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return 0
    stop = _StopFlag()
    stop.install()
    with distributed_session():
        run_training(config, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
