"""Our own launch: `maskdpo train --nproc N` (or --gpus N, or --deepspeed) runs N ranks under torchrun.

This process has validated the pairs and written the work dir already; it runs torchrun
with this interpreter (`run_ranks`), and each rank runs `main` below: it joins the
process group and calls XTuner's train entry with the arguments it was given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from maskdpo_cli.process_group import detect_launch, die_with_parent, process_group


def run_ranks(nproc: int, xtuner_args: Sequence[str], log: Path) -> None:
    """`nproc` ranks on this machine, each running `main` on XTuner's train arguments.

    --standalone: a rendezvous on a free local port, so two runs on one machine never meet
    at the default 29500. Torchrun's stdout (mmengine's console) goes to `log`; stderr
    (progress) passes. The agent dies with this process (kill -9 included), and its ranks
    with the agent: a killed run leaves nothing behind to race the rerun.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", __name__, *xtuner_args]  # __name__: this module, whose `main` is each rank
    with log.open("a") as out:
        code = subprocess.run(cmd, stdout=out, preexec_fn=die_with_parent).returncode
    if code:
        raise RuntimeError(f"distributed training failed (exit {code}); see {log}")


def main(xtuner_args: Sequence[str]) -> None:
    """One rank: dies with the torchrun agent, joins the process group, trains."""
    die_with_parent()  # first, before the seconds of imports: a rank must never outlive the run
    if os.getppid() == 1:
        raise SystemExit("the torchrun agent that started this rank is gone")
    launch = detect_launch()
    if launch is None:
        raise SystemExit(f"python -m {__spec__.name} runs under torchrun; use `maskdpo train`")
    from maskdpo_cli.xtuner_ext.launch import run_xtuner_train

    with process_group(launch):
        run_xtuner_train(xtuner_args)


if __name__ == "__main__":
    main(sys.argv[1:])
