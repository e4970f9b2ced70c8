"""The processes of one training run: who started them, how many there are, and their process group.

A `maskdpo train` run spans several processes in one of two ways, and from the process
group on, both are the same code:

- maskdpo starts them (`--nproc N`, `--gpus N` with N > 1, or `--deepspeed`): see
  `maskdpo_cli.torchrun_launch`.
- someone else starts them: `torchrun ... -m maskdpo_cli.cli train ...` (RANK, WORLD_SIZE,
  LOCAL_RANK) or `srun ... maskdpo train ...` (SLURM_PROCID, SLURM_LOCALID and the step's
  task count). Every rank runs the command; rank 0 validates and writes the work dir while
  the others wait in a collective for its word (or for its error, then exit with its code).

Each rank joins the group here, not in mmengine's `init_dist`: that one selects a CUDA
device before any backend, which fails on a machine without a GPU driver, so gloo on
CPUs could never start. XTuner's train entry then runs with launcher 'pytorch' and finds
the group already there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from maskdpo_cli.errors import MaskDPOError

T = TypeVar("T")

# How long the other ranks wait for rank 0 to validate and tokenize every pair: long enough
# for a large pair file on one core. Training's own collectives keep torch's timeouts.
DECISION_TIMEOUT = timedelta(hours=2)
DEFAULT_MASTER_PORT = 29500
# The gloo group the other ranks wait in for rank 0's word: over TCP, a rank that dies closes
# its sockets and the waiting ranks fail at once (an NCCL wait would run to its timeout).
_decision_group: Any = None


@dataclass(frozen=True)
class Launch:
    """This process's place in a run that a launcher (torchrun or srun) started."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launcher this process runs under, from its environment; None when run by hand.

    SLURM counts only inside a job step (`srun`): a batch script's own shell also has
    SLURM_PROCID=0 and the job's SLURM_NTASKS, and would wait forever for ranks that
    nobody starts.
    """
    env = os.environ if environ is None else environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return Launch("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                          env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT)))
        if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
            world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else "127.0.0.1")
            # One port per job, so two jobs sharing a node do not meet at the same address.
            port = env.get("MASTER_PORT") or DEFAULT_MASTER_PORT + int(env.get("SLURM_JOB_ID", 0)) % 10000
            return Launch("slurm", int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)), addr, int(port))
    except ValueError as err:
        raise MaskDPOError(f"launcher environment: {err}") from None
    return None


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu-[003-004,7],cpu1' -> 'gpu-003' (what
    `scontrol show hostnames` would print first, without needing scontrol)."""
    first = re.split(r",(?![^\[]*\])", nodelist.strip(), maxsplit=1)[0]
    return re.sub(r"\[([^\],-]+)[^\]]*\]", r"\1", first)


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def process_count(gpus: int, nproc: int | None, launch: Launch | None, available: int | None = None) -> int:
    """How many ranks share the global batch: the launcher's, one per GPU, or --nproc on CPUs.
    `available`: the CUDA GPUs there are (default: those visible; a dry run plans for others)."""
    if launch is not None:
        if nproc is not None and nproc != launch.world_size:
            raise MaskDPOError(f"--nproc {nproc}: {launch.launcher} started {launch.world_size} processes; "
                               "leave --nproc out under a launcher")
        return launch.world_size
    if available is None:
        available = cuda_devices()
    if gpus > 1 and available < gpus:
        raise MaskDPOError(f"--gpus {gpus}: only {available} CUDA device(s) visible")
    if gpus and available:
        if nproc is not None and nproc != gpus:
            raise MaskDPOError(f"--nproc {nproc} with --gpus {gpus}: one process per GPU (use --gpus {nproc}, "
                               "or --gpus 0 for CPU processes)")
        return gpus
    return nproc or 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere): a rank must
    not outlive a killed torchrun agent and race the rerun."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


@contextlib.contextmanager
def process_group(launch: Launch) -> Iterator[None]:
    """Inside: this process is rank `launch.rank` of the run's group (NCCL with one GPU per
    local rank, gloo on CPUs); left on the way out."""
    join_process_group(launch)
    try:
        yield
    finally:
        leave_process_group()


def join_process_group(launch: Launch) -> None:
    """SLURM's variables become the RANK/WORLD_SIZE/MASTER_* ones that torch, DeepSpeed and
    mmengine read. DeepSpeed's own `init_distributed` adopts a group that exists."""
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size), LOCAL_RANK=str(launch.local_rank),
                      MASTER_ADDR=launch.master_addr, MASTER_PORT=str(launch.master_port))
    # mmengine warns on every rank when MKL's thread count is unset, then sets it to 1; the
    # launcher has chosen OMP's already (torchrun: 1 per rank), and MKL follows it.
    os.environ.setdefault("MKL_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    cuda = torch.cuda.is_available()
    if cuda:
        if launch.local_rank >= torch.cuda.device_count():
            raise MaskDPOError(f"local rank {launch.local_rank} has no GPU: only {torch.cuda.device_count()} "
                               "visible on this node")
        torch.cuda.set_device(launch.local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    global _decision_group
    _decision_group = dist.new_group(backend="gloo", timeout=DECISION_TIMEOUT)


def leave_process_group() -> None:
    import torch.distributed as dist

    global _decision_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _decision_group = None


def rank0_decides(launch: Launch, decide: Callable[[], T]) -> T:
    """Rank 0 runs `decide()` and every rank gets its result; the others wait meanwhile.

    When rank 0 fails, it raises as usual (one error line) and the others leave quietly
    with the same exit code. When rank 0 dies, the collective fails on the others (the
    connection closes), so nobody waits for a rank that is gone.
    """
    import torch.distributed as dist

    message: list[Any] = [None]
    if launch.is_main:
        try:
            message[0] = ("ok", decide())
        except BaseException as err:
            message[0] = ("error", err.exit_code if isinstance(err, MaskDPOError) else 1)
            _broadcast(dist, message)
            raise
    _broadcast(dist, message)
    kind, value = message[0]
    if kind == "error":
        raise SystemExit(value)  # rank 0 printed the reason
    return value


def _broadcast(dist: Any, message: list[Any]) -> None:
    dist.broadcast_object_list(message, src=0, group=_decision_group)
