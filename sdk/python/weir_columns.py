"""Weir plugin helpers for Python (componentize-py).

Batches cross into a plugin column-wise (see wit/weir.wit); these helpers read them event by event and gather
the answers back into columns. Put this directory on componentize-py's path (`-p sdk/python`).

    batch = Batch(batch)             # the contract's batch
    out = Output()
    for i in range(len(batch)):
        server = batch.get(0, i)     # None when null; ABSENT when the path is missing
        out.set(0, "x").keep()
    return out.finish()
"""

from typing import Any, List, Optional

from wit_world.imports.types import (
    Column as WitColumn, Output as WitOutput, Quarantine, Strings, Verdict_Drop, Verdict_Keep,
    Verdict_Quarantine,
)

ABSENT, NULL, BOOLEAN, INTEGER, FLOAT, TEXT, JSON = range(7)


class Absent:
    """The value of a path that is not in the event (as opposed to `None`, a JSON null)."""

    def __repr__(self) -> str:
        return "ABSENT_VALUE"


ABSENT_VALUE = Absent()


class Json(str):
    """An object or array, as compact JSON text."""


class Column:
    def __init__(self, column: WitColumn):
        self.c = column

    def get(self, i: int) -> Any:
        c = self.c
        kind = c.kinds[i]
        if kind == NULL:
            return None
        if kind == BOOLEAN:
            return c.integers[i] != 0
        if kind == INTEGER:
            return c.integers[i]
        if kind == FLOAT:
            return c.floats[i]
        if kind in (TEXT, JSON):
            text = bytes(c.text.bytes[c.text.offsets[i]:c.text.offsets[i + 1]]).decode("utf-8")
            return text if kind == TEXT else Json(text)
        return ABSENT_VALUE


class Batch:
    def __init__(self, batch):
        self.times = batch.times
        self.fields = [Column(c) for c in batch.fields]

    def __len__(self) -> int:
        return len(self.times)

    def get(self, field: int, i: int) -> Any:
        return self.fields[field].get(i)


class _ColumnBuilder:
    def __init__(self):
        self.kinds: List[int] = []
        self.integers: Optional[List[int]] = None
        self.floats: Optional[List[float]] = None
        self.texts: Optional[List[bytes]] = None

    def put(self, row: int, value: Any) -> None:
        # The same row set again: the last value counts (as in the Rust SDK).
        if len(self.kinds) == row + 1:
            self._pop()
        while len(self.kinds) < row:
            self._push(ABSENT)
        if value is None:
            self._push(NULL)
        elif isinstance(value, bool):
            self._push(BOOLEAN, integer=int(value))
        elif isinstance(value, int):
            self._push(INTEGER, integer=value)
        elif isinstance(value, float):
            self._push(FLOAT, floating=value)
        elif isinstance(value, Json):
            self._push(JSON, text=value.encode("utf-8"))
        elif isinstance(value, str):
            self._push(TEXT, text=value.encode("utf-8"))
        else:
            raise TypeError(f"cannot write a {type(value).__name__}; use Json(json.dumps(...)) for objects")

    def _pop(self) -> None:
        self.kinds.pop()
        for values in (self.integers, self.floats, self.texts):
            if values is not None:
                values.pop()

    def _push(self, kind: int, integer=None, floating=None, text=None) -> None:
        rows = len(self.kinds)
        if integer is not None and self.integers is None:
            self.integers = [0] * rows
        if floating is not None and self.floats is None:
            self.floats = [0.0] * rows
        if text is not None and self.texts is None:
            self.texts = [b""] * rows
        self.kinds.append(kind)
        if self.integers is not None:
            self.integers.append(integer or 0)
        if self.floats is not None:
            self.floats.append(floating or 0.0)
        if self.texts is not None:
            self.texts.append(text or b"")

    def finish(self, rows: int) -> WitColumn:
        while len(self.kinds) < rows:
            self._push(ABSENT)
        text = Strings(b"", [])
        if self.texts is not None:
            offsets = [0]
            for t in self.texts:
                offsets.append(offsets[-1] + len(t))
            text = Strings(b"".join(self.texts), offsets)
        return WitColumn(bytes(self.kinds), self.integers or [], self.floats or [], text)


class Output:
    """The answer for a batch, event by event: `set(field, value)` for the next event, then `keep()`,
    `drop(rule)` or `quarantine(reason, checks)`; `finish()` gives the contract's output."""

    def __init__(self):
        self.verdicts = []
        self.writes: List[_ColumnBuilder] = []
        self.rows = []

    def set(self, field: int, value: Any) -> "Output":
        while len(self.writes) <= field:
            self.writes.append(_ColumnBuilder())
        self.writes[field].put(len(self.verdicts), value)
        return self

    def keep(self) -> "Output":
        self.verdicts.append(Verdict_Keep())
        return self

    def drop(self, rule: str) -> "Output":
        self.verdicts.append(Verdict_Drop(rule))
        return self

    def quarantine(self, reason: str, failed_checks: Optional[List[str]] = None) -> "Output":
        self.verdicts.append(Verdict_Quarantine(Quarantine(reason, failed_checks or [])))
        return self

    def finish(self) -> WitOutput:
        rows = len(self.verdicts)
        return WitOutput(self.verdicts, [w.finish(rows) for w in self.writes], self.rows)
