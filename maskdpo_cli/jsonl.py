"""The one JSONL reader and the writers every command uses.

Reading is strict and locating: any problem becomes an InputError naming file and line.
Writing is either atomic (temp file + rename: the target is complete or untouched) or
append-only with resume (long steps: each finished record is flushed and fsynced, a torn
last line left by a crash is dropped on restart, a lock file refuses a second writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import jsonlines

from maskdpo_cli.errors import InputError, MaskDPOError

STDIO = "-"


def display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


class _Lines:
    """Decoded lines of a byte stream that remember the number of the last one handed out."""

    def __init__(self, raw: IO[bytes], name: str) -> None:
        self.raw, self.name, self.lineno = raw, name, 0

    def __iter__(self) -> Iterator[str]:
        for line in self.raw:
            self.lineno += 1
            if self.lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"invalid UTF-8 at byte {err.start}", self.name, self.lineno) from None
            yield text.rstrip("\r\n")


@contextlib.contextmanager
def _open_binary(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    if str(path) == STDIO:
        yield sys.stdin.buffer
        return
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise MaskDPOError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MaskDPOError(f"{path}: is a directory, expected a JSONL file") from None
    except PermissionError:
        raise MaskDPOError(f"{path}: permission denied") from None
    with fh:
        yield fh


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for every non-blank line; raise InputError on the first bad one."""
    name = display_name(path)
    with _open_binary(path) as raw:
        lines = _Lines(raw, name)
        reader = jsonlines.Reader(lines)
        try:
            for obj in reader.iter(type=dict, skip_empty=True):
                yield lines.lineno, obj
        except jsonlines.InvalidLineError as err:
            cause = err.__cause__ or err.__context__
            if isinstance(cause, json.JSONDecodeError):
                raise InputError(f"not valid JSON ({cause.msg})", name, lines.lineno) from None
            raise InputError("expected a JSON object", name, lines.lineno) from None


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


class RecordWriter:
    """Writes one record per line and flushes, so a pipeline downstream sees records as they come."""

    def __init__(self, fh: IO[str], durable: bool = False) -> None:
        self._fh, self._durable = fh, durable
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(dumps(record) + "\n")
        self._fh.flush()
        if self._durable:
            os.fsync(self._fh.fileno())
        self.count += 1

    def write_all(self, records: Iterable[dict[str, Any]]) -> None:
        for record in records:
            self.write(record)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike | None) -> Iterator[RecordWriter]:
    """Stdout for None or '-'; otherwise a temp file renamed over `path` only on success."""
    if path is None or str(path) == STDIO:
        yield RecordWriter(sys.stdout)
        return
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise MaskDPOError(f"{target}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise MaskDPOError(f"{target}: cannot write ({err.strerror})") from None
    try:
        with open(fd, "w", encoding="utf-8") as fh:
            yield RecordWriter(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as err:
        _silent_unlink(tmp)
        raise MaskDPOError(f"{target}: cannot write ({err.strerror}); previous file left intact") from None
    except BaseException:
        _silent_unlink(tmp)
        raise


def _silent_unlink(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class OutputLock:
    """An O_EXCL lock file next to the output; a lock left by a dead process is taken over."""

    def __init__(self, target: Path) -> None:
        self.path = target.with_name(target.name + ".lock")

    def __enter__(self) -> OutputLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._holder_alive():
                    raise MaskDPOError(
                        f"{self.path}: another maskdpo process (pid {self._holder()}) is writing "
                        "this output; wait for it or choose another -o") from None
                _silent_unlink(self.path)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise MaskDPOError(f"{self.path}: could not take the lock")

    def __exit__(self, *exc: object) -> None:
        _silent_unlink(self.path)

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def _holder_alive(self) -> bool:
        pid = self._holder()
        if pid is None or pid == os.getpid():
            return pid == os.getpid()
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def recover_appendable(path: Path) -> list[dict[str, Any]]:
    """Records already complete in an append-only output; a torn last line is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    records: list[dict[str, Any]] = []
    offset = 0
    for lineno, line in enumerate(data[:keep].split(b"\n")[:-1], start=1):
        start, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if offset == keep:  # a torn final record that happened to end in a newline byte
                keep = start
                break
            raise InputError("not valid JSON in the output being resumed; "
                             "delete the file or choose another -o", str(path), lineno) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object in the output being resumed", str(path), lineno)
        records.append(obj)
    if keep != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return records


@contextlib.contextmanager
def resumable_output(path: str | os.PathLike | None) -> Iterator[tuple[RecordWriter, list[dict[str, Any]]]]:
    """Yield (writer, records already there). Stdout has nothing to resume."""
    if path is None or str(path) == STDIO:
        yield RecordWriter(sys.stdout), []
        return
    target = Path(path)
    if target.parent and not target.parent.is_dir():
        raise MaskDPOError(f"{target}: directory {target.parent} does not exist")
    with OutputLock(target):
        done = recover_appendable(target)
        try:
            fh = open(target, "a", encoding="utf-8")
        except OSError as err:
            raise MaskDPOError(f"{target}: cannot write ({err.strerror})") from None
        with fh:
            try:
                yield RecordWriter(fh, durable=True), done
            except OSError as err:
                raise MaskDPOError(f"{target}: write failed ({err.strerror}); "
                                   "records written so far are kept, rerun to resume") from None


__all__ = ["STDIO", "read_jsonl", "atomic_output", "resumable_output", "RecordWriter", "dumps",
           "display_name", "recover_appendable", "OutputLock"]
