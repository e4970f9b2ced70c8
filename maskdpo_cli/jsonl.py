"""The one JSONL reader and the writers every command uses.

Reading is strict and locating: any problem becomes an InputError naming file and line.
Writing is either atomic (temp file + rename: the target is complete or untouched) or
append-only with resume (long steps: each finished record is flushed and fsynced, a torn
last line left by a crash is dropped on restart, a lock file refuses a second writer).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import jsonlines

from maskdpo_cli.errors import InputError, MaskDPOError

STDIO = "-"


def display_name(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


# Far above any real record (a 32-response annotated line is a few MB); a file without
# newlines (a binary, a JSON array dump) is refused instead of being read whole into memory.
MAX_LINE_BYTES = 64 * 2**20


class _Lines:
    """Decoded lines of a byte stream that remember the number of the last one handed out."""

    def __init__(self, raw: IO[bytes], name: str) -> None:
        self.raw, self.name, self.lineno = raw, name, 0

    def __iter__(self) -> Iterator[str]:
        limit = MAX_LINE_BYTES  # read at call time, so tests can lower it
        while line := self.raw.readline(limit + 1):
            self.lineno += 1
            if len(line) > limit:
                raise InputError(f"line longer than {_size(limit)}; expected one JSON object per line",
                                 self.name, self.lineno)
            if self.lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(f"invalid UTF-8 at byte {err.start}", self.name, self.lineno) from None
            yield text.rstrip("\r\n")


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


class _NotJSON(ValueError):
    """Why a line is not strict JSON, in words for the user (jsonlines chains it as the cause)."""


# A JSON \\u escape of a UTF-16 surrogate: valid only as half of a pair, so worth a check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _reject_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NotJSON(f"the number {text[:20]} is out of range")
    return value


def strict_loads(text: str) -> Any:
    """json.loads, refusing what Python accepts but JSON does not and what could not be written back:
    NaN/Infinity, numbers out of range, lone surrogate escapes; nesting too deep is an error, not a crash."""
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except _NotJSON:
        raise
    except json.JSONDecodeError as err:
        raise _NotJSON(err.msg) from None
    except RecursionError:
        raise _NotJSON("nested too deeply") from None
    except ValueError:  # Python refuses to convert integers of more than ~4300 digits
        raise _NotJSON("a number with too many digits") from None
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _NotJSON("a \\u escape is half of a surrogate pair, not a character") from None
    return value


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
        reader = jsonlines.Reader(lines, loads=strict_loads)
        try:
            for obj in reader.iter(type=dict, skip_empty=True):
                yield lines.lineno, obj
        except jsonlines.InvalidLineError as err:
            if isinstance(err.__cause__, _NotJSON):
                raise InputError(f"not valid JSON ({err.__cause__})", name, lines.lineno) from None
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
        with _stdout_errors():
            yield RecordWriter(sys.stdout)
        return
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise MaskDPOError(f"{target}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        os.chmod(tmp, _created_mode())  # mkstemp makes it private; an output is an ordinary file
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


def _created_mode() -> int:
    """The mode open() would give a new file under this process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write a whole (non-JSONL) file through a temp file and a rename: complete or untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as err:
        _silent_unlink(tmp)
        raise MaskDPOError(f"{path}: cannot write ({err.strerror}); previous file left intact") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def replace_dir(target: Path, write: Callable[[Path], Any]) -> Path:
    """`write(staging)` fills a directory next to `target`, which is then renamed over it: a
    reader sees the previous complete directory or the new one, never a half-written one."""
    staging = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    write(staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


@contextlib.contextmanager
def _stdout_errors() -> Iterator[None]:
    """A full disk behind `> FILE` is named as stdout (a closed pipe stays the CLI's quiet exit)."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO):
            raise  # not a write to stdout that the disk refused
        raise MaskDPOError(f"<stdout>: cannot write ({err.strerror})") from None


def output_dir(path: str | os.PathLike) -> Path:
    """Create an output directory (and its parents) if needed; a clear error when it cannot be."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MaskDPOError(f"{out}: exists and is not a directory; choose another -o") from None
    except OSError as err:
        raise MaskDPOError(f"{out}: cannot create the directory ({err.strerror})") from None
    return out


def _silent_unlink(path: str | os.PathLike) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


class OutputLock:
    """An O_EXCL lock file next to the output; a lock left by a dead process is taken over."""

    def __init__(self, target: Path) -> None:
        self.target = target
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
            except OSError as err:  # a read-only or full disk: say so before any work is done
                raise MaskDPOError(f"{self.target}: cannot write ({err.strerror})") from None
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(str(os.getpid()))
            except OSError as err:
                _silent_unlink(self.path)
                raise MaskDPOError(f"{self.target}: cannot write ({err.strerror})") from None
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


def recover_appendable(path: Path, keep: Callable[[dict[str, Any]], Any] | None = None) -> list[Any]:
    """Records already complete in an append-only output; a torn last line is cut off the file.

    Read line by line, and `keep` reduces each record to what the caller needs (e.g. its id),
    so resuming a multi-GB output holds only that in memory, not the records themselves.
    """
    if not path.exists():
        return []
    records: list[Any] = []
    cut = None  # where a torn final record starts, if there is one
    with open(path, "rb") as fh:
        offset, lineno = 0, 0
        for line in fh:
            lineno += 1
            start, offset = offset, offset + len(line)
            if not line.endswith(b"\n"):  # a torn write: everything after the last newline
                cut = start
                break
            if not line.strip():
                continue
            try:
                obj = strict_loads(line[:-1].decode("utf-8"))
            except (UnicodeDecodeError, _NotJSON):
                if not fh.peek(1):  # a torn final record that happened to end in a newline byte
                    cut = start
                    break
                raise InputError("not valid JSON in the output being resumed; "
                                 "delete the file or choose another -o", str(path), lineno) from None
            if not isinstance(obj, dict):
                raise InputError("expected a JSON object in the output being resumed", str(path), lineno)
            records.append(obj if keep is None else keep(obj))
    if cut is not None:
        with open(path, "r+b") as fh:
            fh.truncate(cut)
    return records


@contextlib.contextmanager
def resumable_output(path: str | os.PathLike | None, keep: Callable[[dict[str, Any]], Any] | None = None
                     ) -> Iterator[tuple[RecordWriter, list[Any]]]:
    """Yield (writer, records already there, each reduced by `keep`). Stdout has nothing to resume."""
    if path is None or str(path) == STDIO:
        with _stdout_errors():
            yield RecordWriter(sys.stdout), []
        return
    target = Path(path)
    if target.parent and not target.parent.is_dir():
        raise MaskDPOError(f"{target}: directory {target.parent} does not exist")
    with OutputLock(target):
        try:
            done = recover_appendable(target, keep)
            fh = open(target, "a", encoding="utf-8")
        except OSError as err:
            raise MaskDPOError(f"{target}: cannot write ({err.strerror})") from None
        with fh:
            try:
                yield RecordWriter(fh, durable=True), done
            except OSError as err:
                # The buffer still holds the record that did not fit: closing now keeps the
                # close from failing the same way again (a torn last line is cut on resume).
                with contextlib.suppress(OSError):
                    fh.close()
                raise MaskDPOError(f"{target}: write failed ({err.strerror}); "
                                   "records written so far are kept, rerun to resume") from None


__all__ = ["STDIO", "MAX_LINE_BYTES", "read_jsonl", "strict_loads", "atomic_output", "resumable_output", "RecordWriter", "dumps",
           "display_name", "recover_appendable", "OutputLock", "output_dir", "write_bytes_atomic",
           "write_text_atomic", "write_json_atomic"]
