"""The settings of one `maskdpo train` run, in one place (in the spirit of TRL's DPOConfig).

The command line (or a caller such as `demo`) builds a TrainConfig once and it is
validated here. A field left None takes the recipe's value: `training.prepare_run` fills
those in once, from the recipe's keys listed in `xtuner_ext.recipe.RECIPE_KEYS`, and from
then on the config is complete. The complete config is what W/run.json records (resume
compares it) and what that same mapping writes into the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maskdpo_cli.errors import MaskDPOError


@dataclass(frozen=True)
class TrainConfig:
    pairs: str  # pairs JSONL; '-' is stdin
    work_dir: str  # logs, checkpoints, reference cache; the model lands in work_dir/hf
    model: str | None = None  # HF directory, embedded alias or hub id (None: the recipe's)
    recipe: str | None = None  # XTuner config file or a name in recipes/ (None: the default recipe)
    use_mask: bool = True  # False: vanilla DPO through the same pipeline (--no-mask)
    beta: float | None = None  # DPO beta (paper: 0.1)
    epochs: int | None = None  # paper: 3; resuming with more extends the run
    lr: float | None = None  # peak learning rate
    batch_size: int | None = None  # global batch in pairs, over every process (paper: 64)
    max_length: int | None = None  # tokens per sequence; longer ones are cut
    gpus: int = 1  # CUDA GPUs, one process each; 0 forces the CPU
    nproc: int | None = None  # processes that share the global batch (None: one per GPU, else 1)
    deepspeed: str | None = None  # zero1 .. zero3_offload or a DeepSpeed JSON file
    resume: bool | None = None  # None: continue the same run in work_dir; False: start over
    seed: int = 0  # data order and initialization

    def __post_init__(self) -> None:
        for flag, value in (("--epochs", self.epochs), ("--max-length", self.max_length),
                            ("--batch-size", self.batch_size), ("--nproc", self.nproc)):
            if value is not None and value < 1:
                raise MaskDPOError(f"{flag} {value}: must be at least 1")
        for flag, value in (("--beta", self.beta), ("--lr", self.lr)):
            if value is not None and value <= 0:
                raise MaskDPOError(f"{flag} {value}: must be positive")
        if self.gpus < 0:
            raise MaskDPOError(f"--gpus {self.gpus}: must be 0 (CPU) or more")

    def run_record(self, *, pairs_sha256: str, micro_batch: int) -> dict[str, Any]:
        """What a checkpoint in W depends on: W/run.json, compared on resume (of a complete config).

        Epochs are left out: resuming with more extends the run. Work dir, DeepSpeed and
        the resume choice do not change what a checkpoint holds.
        """
        return {"pairs_sha256": pairs_sha256, "model": self.model, "recipe": self.recipe,
                "use_mask": self.use_mask, "beta": self.beta, "lr": self.lr, "global_batch": self.batch_size,
                "micro_batch": micro_batch, "max_length": self.max_length, "gpus": self.gpus,
                "processes": self.nproc, "seed": self.seed}
