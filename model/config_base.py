"""ConfigBase: what every frozen config dataclass shares (ModelConfig, MeshConfig, DataConfig, TrainConfig).

A config's fields are plain JSON values (str, int, float, bool, None) so that it round-trips through a
run directory's config.json and can be set from the command line. The allowed types of each field are
read from its annotation (``int | None``, ``float`` ...), never from a second hand-written table:

    @dataclass(frozen=True)
    class FooConfig(ConfigBase):
        width: int = 8
        rate: float = 0.1

        def __post_init__(self):
            self.check_types()          # then the config's own range and cross-field checks

Type rules: ``None`` only where the annotation allows it; a bool is never an int or a float (Python
makes bool a subclass of int); an int is a valid float (as in PEP 484). Every error is one line naming
``Class.field``, the bad value and what is expected, raised as ``cls.error`` (ValueError unless a
subclass chooses a subclass of it).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from typing import Any, ClassVar, TypeVar

PLAIN_TYPES = (int, float, str, bool, type(None))  # the values that survive a JSON round trip unchanged
# The largest integer a config field may hold: steps, sizes and seeds all fit an int32 (the step counter is one);
# anything beyond is a typo, refused in one line rather than overflowing somewhere later.
MAX_INT = 2**31 - 1
NON_FINITE = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")

C = TypeVar("C", bound="ConfigBase")


def allowed_types(hint) -> tuple[type, ...]:
    """The types an annotation admits: ``int | None`` -> (int, NoneType), ``float`` -> (float,)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(typing.get_args(hint))
    return (hint,)


def type_names(allowed: tuple[type, ...], none: str = "None") -> str:
    """(int, NoneType) -> 'int or None' (``none`` spells NoneType: the command line writes 'none')."""
    return " or ".join(none if t is type(None) else t.__name__ for t in allowed)


def is_allowed(value: Any, allowed: tuple[type, ...]) -> bool:
    """Whether ``value`` fits ``allowed``: a bool only where bool is allowed, an int wherever a float is."""
    if isinstance(value, bool):
        return bool in allowed
    if float in allowed and isinstance(value, int):
        return True
    return isinstance(value, allowed)


def parse_value(text: str, allowed: tuple[type, ...], key: str, error: type[Exception] = ValueError) -> Any:
    """``text`` (an override's VALUE) as one of the ``allowed`` types, by JSON-like rules, never eval.

    'none'/'null' -> None, 'true'/'false' -> bool, integers, floats, quoted or bare strings, each only
    where ``allowed`` has the type; otherwise ``error`` naming ``key`` and the types expected.
    """
    s = text.strip()
    if type(None) in allowed and s.lower() in ("none", "null"):
        return None
    if bool in allowed and s.lower() in ("true", "false"):
        return s.lower() == "true"
    if int in allowed and re.fullmatch(r"[-+]?\d+", s):
        return int(s)
    if float in allowed and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", s):
        return float(s)
    if float in allowed and s.lower() in NON_FINITE:
        raise error(f"override {key}={text!r}: NaN and infinity are not valid for {key}; give a finite number")
    if str in allowed:
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
            return s[1:-1]
        return text
    raise error(f"override {key}={text!r}: expected {type_names(allowed, none='none')}")


@functools.cache
def field_types(cls: type) -> dict[str, tuple[type, ...]]:
    """Each field of the dataclass ``cls`` -> the types its annotation allows, in field order."""
    hints = typing.get_type_hints(cls)
    table = {f.name: allowed_types(hints[f.name]) for f in dataclasses.fields(cls)}
    for name, allowed in table.items():
        if not set(allowed) <= set(PLAIN_TYPES):
            raise TypeError(
                f"{cls.__name__}.{name}: annotate it with str, int, float, bool or None (plain JSON values)"
            )
    return table


class ConfigBase:
    """Mixin for frozen config dataclasses: type checks from the annotations, replace/to_dict/from_dict."""

    error: ClassVar[type[ValueError]] = ValueError  # the exception of every check (TrainConfig: ConfigError)

    def check_types(self) -> None:
        """Raise ``self.error`` naming the first field whose value its annotation does not allow."""
        for name, allowed in field_types(type(self)).items():
            value = getattr(self, name)
            if not is_allowed(value, allowed):
                raise self.error(
                    f"{type(self).__name__}.{name}={value!r}: expected {type_names(allowed)}, got {type(value).__name__}"
                )
            where = f"{type(self).__name__}.{name}={value!r}"
            if isinstance(value, float) and not math.isfinite(value):
                raise self.error(f"{where}: NaN and infinity are not valid values here; give a finite number")
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
                raise self.error(f"{where}: beyond 2**31 - 1 = {MAX_INT}, the largest value a config field may hold")

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied and validated again; an unknown field raises ``self.error``."""
        known = field_types(type(self))
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise self.error(f"{type(self).__name__} has no field {unknown[0]!r}; known fields: {', '.join(known)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """The inverse of to_dict; an unknown key raises ``cls.error`` (the dict is data, never executed)."""
        unknown = sorted(set(d) - set(field_types(cls)))
        if unknown:
            raise cls.error(f"{cls.__name__} has no field {unknown[0]!r}; remove it or check its spelling")
        return cls(**d)
