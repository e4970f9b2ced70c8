"""Run XTuner's own `train` entry on a config, in this process or under torchrun.

`xtuner train` (the console script) re-launches `python` from PATH, which is not
necessarily the interpreter maskdpo runs in; so the single-process path calls
`xtuner.tools.train.main` in-process, and the multi-GPU path starts
`sys.executable -m torch.distributed.run ... -m maskdpo_cli.xtuner_ext.launch CONFIG ...`,
whose ranks land in `main()` below. Both apply the CPU shim first.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from maskdpo_cli.xtuner_ext.compat import apply_cpu_shims


def xtuner_train_args(config: str, work_dir: str, *, deepspeed: str | None = None,
                      resume_from: str | None = None, launcher: str = "none") -> list[str]:
    """The arguments of XTuner's train entry (without the program name)."""
    args = [config, "--work-dir", work_dir, "--launcher", launcher]
    if deepspeed:
        args += ["--deepspeed", deepspeed]
    if resume_from:
        args += ["--resume", resume_from]
    return args


def run_xtuner_train(args: Sequence[str]) -> None:
    """XTuner's train main with `args` as its command line, in this process."""
    apply_cpu_shims()
    from xtuner.tools import train as xtuner_train

    saved = sys.argv
    sys.argv = ["xtuner-train", *args]
    try:
        xtuner_train.main()
    finally:
        sys.argv = saved


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """One process per GPU with the current interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "-m", "maskdpo_cli.xtuner_ext.launch", *args]


def main(argv: Sequence[str] | None = None) -> None:
    run_xtuner_train(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
