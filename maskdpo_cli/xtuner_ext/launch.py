"""Run XTuner's own `train` entry on a config, in this process or as one rank of several.

`xtuner train` (the console script) re-launches `python` from PATH, which is not
necessarily the interpreter maskdpo runs in; so every path calls `xtuner.tools.train.main`
in-process, on every rank too (`maskdpo_cli.torchrun_launch` starts ranks and
`maskdpo_cli.process_group` joins them).
The CPU shim comes first.
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
