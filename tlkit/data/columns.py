"""Packed columns: the flat buffers a :class:`~tlkit.data.records.RecordTable` keeps its records in.

:class:`PackedStrings` holds many strings in one byte buffer with an offset per string (ids, stamps, packed source
fields); a :class:`Column` holds one source field per record, in the cheapest form that fits the values (integers in
an array, a few distinct strings stored once with a code per record, packed strings, tuples field by field, anything
else as a Python list), chosen by :class:`ColumnBuilder` as the values arrive.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from tlkit.data.ids import id_bytes, id_from_bytes

if TYPE_CHECKING:
    import numpy as np

#: Distinct values a string column of sources stores once (shards, files, column names); past that it is packed.
MAX_DISTINCT = 4096
#: Indices gathered per step by :meth:`PackedStrings.take` (bounds the temporary memory).
TAKE_STEP = 65536


def numpy_module() -> Any:
    """``numpy``, imported when first needed."""
    import numpy as np

    return np


def checked_position(i: int, n: int) -> int:
    """Index ``i`` of a sequence of ``n`` (negative from the end) as a position, or :class:`IndexError`."""
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(i)
    return i


class PackedStrings(Sequence[str]):
    """Strings in one byte buffer with an offset per string (UTF-8; surrogate-escaped bytes of non-UTF-8 file
    names are kept, as in :func:`tlkit.data.ids.id_bytes`)."""

    __slots__ = ("_blob", "_offsets")

    def __init__(self, blob: bytes, offsets: np.ndarray) -> None:
        self._blob, self._offsets = blob, offsets  # offsets: int64, one more than strings, absolute into blob

    @classmethod
    def of(cls, strings: Iterable[str]) -> PackedStrings:
        builder = StringsBuilder()
        for s in strings:
            builder.append(s)
        return builder.build()

    @classmethod
    def from_bytes(cls, raw: Sequence[bytes]) -> PackedStrings:
        """From encoded strings (what h5py reads from a variable-length string dataset)."""
        np = numpy_module()
        lengths = np.fromiter((len(b) for b in raw), np.int64, count=len(raw))
        offsets = np.zeros(len(raw) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(b"".join(raw), offsets)

    @classmethod
    def concat(cls, parts: Sequence[PackedStrings]) -> PackedStrings:
        np = numpy_module()
        if not parts:
            return cls(b"", np.zeros(1, np.int64))
        blobs, offsets, base = [], [np.zeros(1, np.int64)], 0
        for p in parts:
            lo, hi = int(p._offsets[0]), int(p._offsets[-1])
            blobs.append(p._blob[lo:hi])
            offsets.append(p._offsets[1:] - lo + base)
            base += hi - lo
        return cls(b"".join(blobs), np.concatenate(offsets))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def at(self, idx: np.ndarray) -> list[str]:
        """The strings at positions ``idx`` (an ``int64`` array, each in range), as a list."""
        blob, offsets = self._blob, self._offsets
        starts, ends = offsets[idx].tolist(), offsets[idx + 1].tolist()
        return [id_from_bytes(blob[a:b]) for a, b in zip(starts, ends, strict=True)]

    def raw(self, i: int) -> bytes:
        """The encoded bytes of string ``i`` (what the cache stores)."""
        return self._blob[int(self._offsets[i]) : int(self._offsets[i + 1])]

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> PackedStrings: ...
    def __getitem__(self, i: int | slice) -> str | PackedStrings:
        if isinstance(i, slice):
            a, b, step = i.indices(len(self))
            if step != 1:
                return self.take(numpy_module().arange(a, b, step))
            return PackedStrings(self._blob, self._offsets[a : max(a, b) + 1])
        return id_from_bytes(self.raw(checked_position(i, len(self))))

    def __iter__(self) -> Iterator[str]:
        return map(id_from_bytes, self.raw_items())

    def raw_items(self) -> Iterator[bytes]:
        """The encoded strings, in order."""
        blob, offsets = self._blob, self._offsets.tolist()
        for a, b in zip(offsets, offsets[1:], strict=False):
            yield blob[a:b]

    def take(self, indices: Any) -> PackedStrings:
        """The strings at ``indices`` (a sequence or array of positions), as a new buffer."""
        np = numpy_module()
        idx = np.asarray(indices, np.int64).reshape(-1)
        blob, offsets = self._blob, self._offsets
        parts: list[bytes] = []
        lengths = np.empty(len(idx), np.int64)
        for a in range(0, len(idx), TAKE_STEP):
            chunk = idx[a : a + TAKE_STEP]
            starts, ends = offsets[chunk].tolist(), offsets[chunk + 1].tolist()
            parts.append(b"".join([blob[s:e] for s, e in zip(starts, ends, strict=True)]))
            lengths[a : a + len(chunk)] = offsets[chunk + 1] - offsets[chunk]
        out = np.zeros(len(idx) + 1, np.int64)
        np.cumsum(lengths, out=out[1:])
        return PackedStrings(b"".join(parts), out)

    @property
    def nbytes(self) -> int:
        """Bytes of string data (without the offsets)."""
        return int(self._offsets[-1] - self._offsets[0]) if len(self._offsets) else 0

    @property
    def held_bytes(self) -> int:
        """Bytes the buffers hold (the whole buffer a slice shares, and the offsets)."""
        return len(self._blob) + int(self._offsets.nbytes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedStrings):
            return len(self) == len(other) and list(self.raw_items()) == list(other.raw_items())
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(s) for s in self[:3])
        return f"PackedStrings([{head}{', ...' if len(self) > 3 else ''}], n={len(self)})"


class StringsBuilder:
    """Appends strings into one growing buffer (no Python object kept per string)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._offsets = array("q", [0])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, s: str) -> None:
        self._buf += id_bytes(s)
        self._offsets.append(len(self._buf))

    def build(self) -> PackedStrings:
        return PackedStrings(bytes(self._buf), numpy_module().frombuffer(self._offsets, numpy_module().int64).copy())


# -- source columns --------------------------------------------------------------------------------------------------
class Column:
    """A built, read-only column of values (one per record)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, i: int) -> Any:
        raise NotImplementedError

    def values_at(self, idx: np.ndarray) -> list[Any]:
        """The values at positions ``idx`` (an ``int64`` array, each in range), as a list."""
        return [self.get(i) for i in idx.tolist()]

    def take(self, idx: np.ndarray) -> Column:
        raise NotImplementedError

    def slice(self, a: int, b: int) -> Column:
        return self.take(numpy_module().arange(a, b, dtype=numpy_module().int64))


class _IntColumn(Column):
    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def get(self, i: int) -> Any:
        return int(self.values[i])

    def values_at(self, idx: np.ndarray) -> list[Any]:
        out: list[Any] = self.values[idx].tolist()
        return out

    def take(self, idx: np.ndarray) -> Column:
        return _IntColumn(self.values[idx])

    def slice(self, a: int, b: int) -> Column:
        return _IntColumn(self.values[a:b])


class _CodedColumn(Column):
    """Few distinct values (``str`` or ``None``), each stored once, and a code per record."""

    def __init__(self, values: list[str | None], codes: np.ndarray) -> None:
        self.values, self.codes = values, codes

    def __len__(self) -> int:
        return len(self.codes)

    def get(self, i: int) -> Any:
        return self.values[int(self.codes[i])]

    def values_at(self, idx: np.ndarray) -> list[Any]:
        values = self.values
        return [values[c] for c in self.codes[idx].tolist()]

    def take(self, idx: np.ndarray) -> Column:
        return _CodedColumn(self.values, self.codes[idx])

    def slice(self, a: int, b: int) -> Column:
        return _CodedColumn(self.values, self.codes[a:b])


class _PackedColumn(Column):
    def __init__(self, strings: PackedStrings) -> None:
        self.strings = strings

    def __len__(self) -> int:
        return len(self.strings)

    def get(self, i: int) -> Any:
        return self.strings[i]

    def values_at(self, idx: np.ndarray) -> list[Any]:
        out: list[Any] = self.strings.at(idx)
        return out

    def take(self, idx: np.ndarray) -> Column:
        return _PackedColumn(self.strings.take(idx))

    def slice(self, a: int, b: int) -> Column:
        return _PackedColumn(self.strings[a:b])


class _TupleColumn(Column):
    def __init__(self, fields: list[Column], n: int) -> None:
        self.fields, self.n = fields, n

    def __len__(self) -> int:
        return self.n

    def get(self, i: int) -> Any:
        return tuple(f.get(i) for f in self.fields)

    def values_at(self, idx: np.ndarray) -> list[Any]:
        if not self.fields:
            return [()] * len(idx)
        return list(zip(*(f.values_at(idx) for f in self.fields), strict=True))

    def take(self, idx: np.ndarray) -> Column:
        return _TupleColumn([f.take(idx) for f in self.fields], len(idx))

    def slice(self, a: int, b: int) -> Column:
        return _TupleColumn([f.slice(a, b) for f in self.fields], max(0, b - a))


class _ObjectColumn(Column):
    def __init__(self, values: list[Any]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def get(self, i: int) -> Any:
        return self.values[i]

    def take(self, idx: np.ndarray) -> Column:
        return _ObjectColumn([self.values[i] for i in idx.tolist()])

    def slice(self, a: int, b: int) -> Column:
        return _ObjectColumn(self.values[a:b])


def _kind(value: Any) -> str:
    if value is None or isinstance(value, str):
        return "str"
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return "int"
    if type(value) is tuple:
        return f"tuple{len(value)}"
    return "object"


class ColumnBuilder:
    """Appends values and chooses their storage: integers in an array, strings coded (few distinct) or packed,
    tuples field by field, anything else (or a mix) as a plain list."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.n = 0
        self._ints = array("q")
        self._codes = array("i")
        self._distinct: dict[str | None, int] = {}
        self._packed: StringsBuilder | None = None
        self._fields: list[ColumnBuilder] = []
        self._objects: list[Any] = []

    def append(self, value: Any) -> None:
        kind = _kind(value)
        if self.kind is None:
            self.kind = kind
            if kind.startswith("tuple"):
                self._fields = [ColumnBuilder() for _ in range(len(value))]
        elif kind != self.kind and self.kind != "object":
            self._to_objects()
        if self.kind == "object":
            self._objects.append(value)
        elif self.kind == "int":
            self._ints.append(value)
        elif self.kind == "str":
            self._append_str(value)
        else:
            for f, v in zip(self._fields, value, strict=True):
                f.append(v)
        self.n += 1

    def _append_str(self, value: str | None) -> None:
        if self._packed is not None:
            if value is None:
                self._to_objects()
                self._objects.append(value)
                return
            self._packed.append(value)
            return
        code = self._distinct.get(value)
        if code is None:
            if len(self._distinct) >= MAX_DISTINCT and value is not None and None not in self._distinct:
                self._packed = StringsBuilder()
                values = list(self._distinct)
                for c in self._codes:
                    self._packed.append(values[c] or "")
                self._distinct, self._codes = {}, array("i")
                self._packed.append(value)
                return
            code = self._distinct[value] = len(self._distinct)
        self._codes.append(code)

    def _to_objects(self) -> None:
        objects: list[Any]
        if self.kind == "str" and self._packed is None:
            values = list(self._distinct)
            objects = [values[c] for c in self._codes]
        elif self.kind == "str" and self._packed is not None:
            objects = list(self._packed.build())
        elif self.kind == "int":
            objects = list(self._ints)
        elif self.kind is not None and self.kind.startswith("tuple"):
            built = [f.build() for f in self._fields]
            objects = [tuple(c.get(i) for c in built) for i in range(self.n)]
        else:
            objects = list(self._objects)
        self.kind, self._objects = "object", objects
        self._ints, self._codes, self._distinct, self._packed, self._fields = array("q"), array("i"), {}, None, []

    def build(self) -> Column:
        np = numpy_module()
        if self.kind is None:
            return _ObjectColumn([])
        if self.kind == "int":
            return _IntColumn(np.frombuffer(self._ints, np.int64).copy())
        if self.kind == "str":
            if self._packed is not None:
                return _PackedColumn(self._packed.build())
            return _CodedColumn(list(self._distinct), np.frombuffer(self._codes, np.int32).copy())
        if self.kind == "object":
            return _ObjectColumn(self._objects)
        return _TupleColumn([f.build() for f in self._fields], self.n)


def column_bytes(column: Column) -> int:
    if isinstance(column, _IntColumn):
        return int(column.values.nbytes)
    if isinstance(column, _CodedColumn):
        return int(column.codes.nbytes) + sum(len(v or "") for v in column.values)
    if isinstance(column, _PackedColumn):
        return column.strings.held_bytes
    if isinstance(column, _TupleColumn):
        return sum(column_bytes(f) for f in column.fields)
    return 0


__all__ = [
    "MAX_DISTINCT",
    "TAKE_STEP",
    "Column",
    "ColumnBuilder",
    "PackedStrings",
    "StringsBuilder",
    "checked_position",
    "column_bytes",
    "numpy_module",
]
