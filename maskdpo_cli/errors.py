"""Errors a user can act on. The CLI turns them into one line on stderr and an exit code."""

from __future__ import annotations


class MaskDPOError(Exception):
    """Bad input or usage: exit code 2, one line, no traceback."""

    exit_code = 2


class InputError(MaskDPOError):
    """A problem with one record of an input file, located by file, line and field."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message, self.path, self.line, self.field = message, path, line, field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.path or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        field = f" field '{self.field}':" if self.field else ""
        return f"{where}:{field} {self.message}"


class JudgeError(MaskDPOError):
    """The judge could not give a usable verdict after all retries (exit code 1: not the input's fault)."""

    exit_code = 1
