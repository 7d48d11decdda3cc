"""Errors that reach the user. Each names the file, the column and the rule that was broken."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class SeqrecError(Exception):
    """Base class for errors that are shown to the user without a traceback."""


class DataContractError(SeqrecError):
    """Input data broke a rule of the data contract."""

    def __init__(
        self,
        file: str | None,
        column: str | None,
        rule: str,
        sample: Iterable[Any] | None = None,
        count: int | None = None,
        shortened: bool = False,
    ) -> None:
        self.file = file
        self.column = column
        self.rule = rule
        # values as short reprs (a string shows its quotes, so '' and ' a' stay visible), shortened once
        self.sample = list(sample or [])[:5] if shortened else [_short(v) for v in list(sample or [])[:5]]
        self.count = count
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [f"file: {self.file or '-'}", f"column: {self.column or '-'}", f"rule: {self.rule}"]
        if self.count is not None:
            parts.append(f"offending rows: {self.count}")
        if self.sample:
            parts.append(f"sample: {', '.join(self.sample)}")
        return "data contract violated; " + "; ".join(parts)

    def __reduce__(self):  # survive pickling across Dask worker processes
        return (self.__class__, (self.file, self.column, self.rule, self.sample, self.count, True))

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "column": self.column,
            "rule": self.rule,
            "sample": self.sample,
            "count": self.count,
        }


class ConfigError(SeqrecError):
    """The pipeline configuration is invalid (unknown key, bad value, bad path)."""


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
