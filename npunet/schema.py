"""Checking JSON documents (specs, weights headers) against a schema: types, ranges, sizes, allowed keys.

npunet reads two kinds of JSON written by others: architecture specs and the header of a weights file. Both
are checked here before any value is used, so a wrong type, a missing key, a number out of range or an
unknown key is one line naming the place ("spec 'x': encoder[2].num_convs: expected an integer in 1..8,
got 1000000000.0"), never a KeyError or TypeError further down.

    STAGE = Obj({"channels": Int(1, 4096), "conv": Str(("conv3x3", "ds")), "eca_kernel": Opt(Int(1, 63))})
    stage = validate(document, STAGE, "spec 'x'", SpecError)     # returns it with defaults filled in

`parse_json` turns bytes into a document with the same care: at most `max_bytes`, UTF-8, no NaN or
Infinity, no key twice in one object (JSON allows it and keeps the last, silently), not nested too deep.
"""

from __future__ import annotations

import json
import math

_MISSING = object()


class _Invalid(Exception):
    """Raised inside the checkers; `validate` turns it into the caller's error class."""


def describe(value) -> str:
    """A short description of a JSON value for a message: `'abc'`, `12.5`, `a list of 3`, `an object`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 24 else text[:21] + "..."
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 42 else text[:39] + "...'"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


class Schema:
    def check(self, value, where: str):
        raise NotImplementedError

    def fail(self, where: str, expected: str, value):
        raise _Invalid(f"{_at(where)}expected {expected}, got {describe(value)}")


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def _key(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


class Int(Schema):
    """An integer (not a bool, not a float such as 2.0) in lo..hi, odd if asked."""

    def __init__(self, lo: int, hi: int, odd: bool = False):
        self.lo, self.hi, self.odd = lo, hi, odd

    def check(self, value, where):
        what = f"{'an odd' if self.odd else 'an'} integer in {self.lo}..{self.hi}"
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, what, value)
        if not self.lo <= value <= self.hi or (self.odd and value % 2 == 0):
            self.fail(where, what, value)
        return value


class Num(Schema):
    """A finite number (int or float, not a bool) with lo <= x <= hi (or lo < x with `above`)."""

    def __init__(self, lo: float, hi: float, above: bool = False):
        self.lo, self.hi, self.above = lo, hi, above

    def check(self, value, where):
        what = f"a number {'>' if self.above else '>='} {self.lo:g} and <= {self.hi:g}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, what, value)
        if value > self.hi or value < self.lo or (self.above and value == self.lo):
            self.fail(where, what, value)
        return value


class Bool(Schema):
    def check(self, value, where):
        if not isinstance(value, bool):
            self.fail(where, "true or false", value)
        return value


class Str(Schema):
    """A string: one of `choices`, or any printable string of 1..max_len characters."""

    def __init__(self, choices: tuple | None = None, max_len: int = 200):
        self.choices, self.max_len = choices, max_len

    def check(self, value, where):
        if self.choices is not None:
            if not isinstance(value, str) or value not in self.choices:
                shown = ", ".join(repr(c) for c in self.choices[:8])
                more = f", ... ({len(self.choices)} in all)" if len(self.choices) > 8 else ""
                self.fail(where, f"one of {shown}{more}", value)
            return value
        if not isinstance(value, str) or not 1 <= len(value) <= self.max_len or not value.isprintable():
            self.fail(where, f"a printable string of 1..{self.max_len} characters", value)
        return value


class Opt(Schema):
    """Inside an Obj, a key that may be left out (then `default`, if there is one). Without a default, null
    is accepted too (it means "none"); with one, null is refused like any other wrong type."""

    def __init__(self, inner: Schema, default=None):
        self.inner, self.default = inner, default

    def check(self, value, where):
        if value is None and self.default is None:
            return None
        return self.inner.check(value, where)


class List(Schema):
    def __init__(self, item: Schema, min_len: int, max_len: int):
        self.item, self.min_len, self.max_len = item, min_len, max_len

    def check(self, value, where):
        if not isinstance(value, list) or not self.min_len <= len(value) <= self.max_len:
            self.fail(where, f"a list of {self.min_len}..{self.max_len} items", value)
        return [self.item.check(v, f"{where}[{i}]") for i, v in enumerate(value)]


class Obj(Schema):
    """An object with these keys (Opt ones may be missing) and no others; returns a copy, defaults filled."""

    def __init__(self, fields: dict[str, Schema]):
        self.fields = fields

    def check(self, value, where):
        if not isinstance(value, dict):
            self.fail(where, "an object", value)
        unknown = [k for k in value if k not in self.fields]
        if unknown:
            raise _Invalid(f"{_at(where)}unknown key {describe(unknown[0])} (known: {', '.join(self.fields)})")
        out = {}
        for key, schema in self.fields.items():
            item = value.get(key, _MISSING)
            if item is _MISSING:
                if not isinstance(schema, Opt):
                    raise _Invalid(f"{_at(where)}missing key {key!r}")
                if schema.default is not None:
                    out[key] = schema.default
                continue
            out[key] = schema.check(item, _key(where, key))
        return out


class Map(Schema):
    """An object used as a mapping: up to `max_items` keys, each checked by `key` (a Str), values by `value`."""

    def __init__(self, key: Schema, value: Schema, max_items: int):
        self.key, self.value, self.max_items = key, value, max_items

    def check(self, value, where):
        if not isinstance(value, dict) or len(value) > self.max_items:
            self.fail(where, f"an object of at most {self.max_items} keys", value)
        return {self.key.check(k, f"{where} key".strip()): self.value.check(v, f"{where}[{describe(k)}]")
                for k, v in value.items()}


class Any(Schema):
    """Any JSON value (already bounded by parse_json's size limit)."""

    def check(self, value, where):
        return value


def validate(document, schema: Schema, what: str, error: type[Exception]):
    """`document` checked against `schema` (a copy with defaults filled in), or error(one line): "<what>:
    <path of the value>: expected ..., got ..."."""
    try:
        return schema.check(document, "")
    except _Invalid as exc:
        raise error(f"{what}: {exc}") from None


class _DuplicateKey(ValueError):
    pass


def _object_without_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"the key {describe(key)} appears twice in one object")
        out[key] = value
    return out


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(data: bytes, what: str, error: type[Exception], max_bytes: int):
    """The JSON document in `data`, or error(one line) saying what is wrong with it (`what` names it)."""
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data):,} bytes, more than the {max_bytes:,} allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 text (byte {exc.start} is {data[exc.start:exc.start + 1]!r}); "
                    f"is it a binary file?") from None
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise error(f"{what} nests lists or objects too deeply") from None
    except ValueError as exc:    # a duplicate key, NaN/Infinity, an integer of thousands of digits
        raise error(f"{what} is not acceptable JSON: {' '.join(str(exc).split())[:160]}") from None
