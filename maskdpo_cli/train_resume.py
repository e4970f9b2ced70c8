"""Resuming `maskdpo train`: the last checkpoint in W, and whether it belongs to this run.

W/run.json records what a checkpoint depends on (`TrainConfig.run_record`); rerunning the
same command continues from the last checkpoint, and a run with other settings is refused
rather than continued with an optimizer state that silently carries the old ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from maskdpo_cli.errors import MaskDPOError
from maskdpo_cli.progress import stderr


def last_checkpoint(work: Path) -> str | None:
    """The checkpoint mmengine finished last. The marker is written after the checkpoint is
    complete, so a file a kill tore mid-save is never named by it."""
    marker = work / "last_checkpoint"
    if not marker.is_file():
        return None
    path = marker.read_text().strip()
    return path if path and Path(path).exists() else None


def resume_point(work: Path, run_record: dict[str, Any], resume: bool | None) -> str | None:
    """The checkpoint to continue from: by default the last one of the same run in W.

    resume=None (the default) continues a run with the same record and refuses one with
    another (its optimizer state would silently carry the other settings); False starts
    over; True insists on continuing, as mmengine's --resume does.
    """
    checkpoint = last_checkpoint(work)
    if resume is False or checkpoint is None:
        if resume:
            stderr.print(f"note: no checkpoint in {work}; training from the start", highlight=False)
        return None
    saved_path = work / "run.json"
    saved = json.loads(saved_path.read_text()) if saved_path.is_file() else None
    if saved is not None and saved != run_record:
        changed = ", ".join(f"{key} {saved.get(key)} -> {run_record.get(key)}"
                            for key in [*run_record, *(k for k in saved if k not in run_record)]
                            if saved.get(key) != run_record.get(key))
        raise MaskDPOError(f"{work} holds a checkpoint of a run with other settings ({changed}); "
                           "pass --no-resume to start over there, or choose another --work-dir")
    if saved is None and not resume:
        raise MaskDPOError(f"{work} holds a checkpoint of an unknown run; pass --resume to continue it "
                           "or --no-resume to start over")
    stderr.print(f"resuming from {checkpoint} (--no-resume starts over)", highlight=False)
    return checkpoint


def clear_checkpoints(work: Path) -> None:
    """A fresh start must not leave an older run's checkpoints for a later resume to pick up."""
    for path in [work / "last_checkpoint", *work.glob("iter_*.pth"), *work.glob("epoch_*.pth")]:
        if path.is_dir():
            shutil.rmtree(path)  # DeepSpeed checkpoints are folders
        else:
            path.unlink(missing_ok=True)
