"""Small helpers shared by the test files (imported as `helpers`: tests/ is on sys.path)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def labels_of(record: dict) -> dict[str, str]:
    """{sentence text: label} over every response of an annotated record."""
    return {s["text"]: s["label"] for resp in record["responses"] for s in resp["sentences"]}


def run_cli(args: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The real `maskdpo` entry point in-process: (exit code, stdout, stderr)."""
    from maskdpo_cli.cli import main

    old = sys.argv
    sys.argv = ["maskdpo", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err
