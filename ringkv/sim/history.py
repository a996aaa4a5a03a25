"""Histories of client operations, as recorded by the simulator or a check run.

A history is the raw material of the consistency checker: what each client
asked, what it was told, and when. It is kept in JSON lines so that a run can
be replayed and compared byte for byte with another run of the same seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringkv.wire.codec import Err

PUT = "put"
GET = "get"
REMOVE = "remove"
KINDS = (PUT, GET, REMOVE)

_SHOWN_BYTES = 20


@dataclass(frozen=True, slots=True)
class Op:
    """One client operation on one key.

    `value`/`version`: for a put, what was written; for a get, what was
    returned (None if not found). `response` is None when no reply came (the
    op may or may not have taken effect, at any time after `invoke`); `err` is
    then None too.
    """

    client: int
    kind: str
    key: bytes
    value: bytes | None
    version: int
    invoke: float
    response: float | None
    err: int | None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.response is not None and self.response < self.invoke:
            raise ValueError(f"response {self.response} before invoke {self.invoke}")
        if (self.response is None) != (self.err is None):
            raise ValueError("response and err must be both set or both None")
        if self.kind == PUT and self.value is None:
            raise ValueError("a put needs a value")
        if self.kind == GET and self.err == Err.OK and self.value is None:
            raise ValueError("a successful get needs a value")

    @property
    def completed(self) -> bool:
        return self.response is not None

    def __str__(self) -> str:
        if self.kind == PUT:
            what = f"put({show_bytes(self.key)}, {show_value(self.value, self.version)})"
        else:
            what = f"{self.kind}({show_bytes(self.key)})"
        if self.response is None:
            return f"client {self.client} {what} -> no reply [{self.invoke:.6g}, -]"
        if self.kind == GET and self.err == Err.OK:
            result = show_value(self.value, self.version)
        else:
            assert self.err is not None  # a response always carries one
            result = _ERR_NAMES.get(self.err, f"err {self.err}")
        return f"client {self.client} {what} -> {result} [{self.invoke:.6g}, {self.response:.6g}]"

    def to_json(self) -> str:
        """One JSON line; fixed field order and shortest float repr make it stable."""
        fields: dict[str, Any] = {
            "client": self.client,
            "kind": self.kind,
            "key": self.key.hex(),
            "value": None if self.value is None else self.value.hex(),
            "version": self.version,
            "invoke": float(self.invoke),
            "response": None if self.response is None else float(self.response),
            "err": self.err,
        }
        return json.dumps(fields, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> Op:
        d = json.loads(line)
        value = d["value"]
        response = d["response"]
        return cls(
            client=int(d["client"]),
            kind=str(d["kind"]),
            key=bytes.fromhex(d["key"]),
            value=None if value is None else bytes.fromhex(value),
            version=int(d["version"]),
            invoke=float(d["invoke"]),
            response=None if response is None else float(response),
            err=None if d["err"] is None else int(d["err"]),
        )


_ERR_NAMES: dict[int, str] = {
    Err.OK: "ok",
    Err.NO_KEY: "not found",
    Err.NO_SPACE: "out of space",
    Err.OVERLOAD: "overload",
    Err.INTERNAL: "internal error",
}


def show_bytes(data: bytes) -> str:
    """Short readable form of a key or value for reports."""
    shown = data[:_SHOWN_BYTES]
    text = repr(shown) if shown.isascii() else "0x" + shown.hex()
    if len(data) > _SHOWN_BYTES:
        text += f"...({len(data)} bytes)"
    return text


def show_value(value: bytes | None, version: int) -> str:
    return "absent" if value is None else f"{show_bytes(value)}@v{version}"


class History:
    """An append-only list of operations, in the order they were recorded."""

    __slots__ = ("_ops",)

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self._ops: list[Op] = list(ops)

    def append(self, op: Op) -> None:
        self._ops.append(op)

    def extend(self, ops: Iterable[Op]) -> None:
        self._ops.extend(ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops)

    def __getitem__(self, index: int) -> Op:
        return self._ops[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self._ops == other._ops

    __hash__ = None  # type: ignore[assignment]  # mutable

    def by_key(self) -> dict[bytes, list[Op]]:
        """Ops grouped per key, keys in first-seen order, ops in recorded order."""
        groups: dict[bytes, list[Op]] = {}
        for op in self._ops:
            groups.setdefault(op.key, []).append(op)
        return groups

    def to_jsonl(self) -> str:
        """The whole history as JSON lines; identical histories give identical text."""
        return "".join(op.to_json() + "\n" for op in self._ops)

    @classmethod
    def from_jsonl(cls, text: str) -> History:
        return cls(Op.from_json(line) for line in text.splitlines() if line.strip())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_jsonl(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> History:
        return cls.from_jsonl(Path(path).read_text(encoding="utf-8"))
