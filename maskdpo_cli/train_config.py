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

# LoRA's dropout when neither --lora-dropout nor the recipe gives one. With the base frozen,
# dropout on the adapter's input is the adapter's only regularizer; 0.05 is what the QLoRA
# paper (Dettmers et al., 2023) used for 7B-13B models and what TRL's and the alignment
# handbook's LoRA DPO recipes use. It cannot move the first step: lora_B starts at zero.
DEFAULT_LORA_DROPOUT = 0.05
# `--lora R` on a recipe written for full fine-tuning, without --lr: the recipe's rate times
# this. An adapter of low rank needs a larger step to move the policy as far: on the world
# (experiments/lora_vs_full.py, rank 8) LoRA at the full rate barely trained, and 10x the
# full rate matched full Mask-DPO's fact precision (3x: too little, 30x: mostly filler).
# The usual rule of thumb for LoRA agrees. A recipe with its own adapter keeps its own rate.
LORA_LR_FACTOR = 10


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
    # LoRA: a trainable low-rank adapter on a frozen base (xtuner_ext/lora.py). None: the recipe's.
    lora: int | None = None  # rank R; 0: full fine-tuning
    lora_alpha: float | None = None  # the adapter's output is scaled by alpha / R (default 2R)
    lora_dropout: float | None = None  # dropout on the adapter's input (default DEFAULT_LORA_DROPOUT)
    qlora: bool | None = None  # the frozen base in 4-bit NF4 through bitsandbytes (needs CUDA)

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
        self._check_lora()

    def _check_lora(self) -> None:
        if self.lora is not None and self.lora < 0:
            raise MaskDPOError(f"--lora {self.lora}: the adapter's rank must be 1 or more (0: no LoRA)")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise MaskDPOError(f"--lora-alpha {self.lora_alpha}: must be positive")
        if self.lora_dropout is not None and not 0 <= self.lora_dropout < 1:
            raise MaskDPOError(f"--lora-dropout {self.lora_dropout}: must be in [0, 1)")
        if self.lora == 0 and (self.qlora or self.lora_alpha is not None or self.lora_dropout is not None):
            flag = "--qlora" if self.qlora else "--lora-alpha" if self.lora_alpha is not None else "--lora-dropout"
            raise MaskDPOError(f"{flag} needs a LoRA adapter: give its rank with --lora R")
        if self.lora and self.deepspeed is not None:
            raise MaskDPOError(f"--lora with --deepspeed {self.deepspeed}: LoRA trains without DeepSpeed "
                               "(its model states fit one GPU; --gpus N runs one process per GPU)")

    @property
    def lora_settings(self) -> dict[str, Any] | None:
        """The adapter of a complete config, as run.json records it; None without LoRA."""
        if not self.lora:
            return None
        return {"r": self.lora, "alpha": self.lora_alpha, "dropout": self.lora_dropout, "qlora": bool(self.qlora)}

    def run_record(self, *, pairs_sha256: str, micro_batch: int) -> dict[str, Any]:
        """What a checkpoint in W depends on: W/run.json, compared on resume (of a complete config).

        Epochs are left out: resuming with more extends the run. Work dir, DeepSpeed and
        the resume choice do not change what a checkpoint holds.
        """
        record = {"pairs_sha256": pairs_sha256, "model": self.model, "recipe": self.recipe,
                  "use_mask": self.use_mask, "beta": self.beta, "lr": self.lr, "global_batch": self.batch_size,
                  "micro_batch": micro_batch, "max_length": self.max_length, "gpus": self.gpus,
                  "processes": self.nproc, "seed": self.seed}
        if self.lora_settings is not None:  # full fine-tuning keeps the record it always had
            record["lora"] = self.lora_settings
        return record
