"""Checks of user input, written once: the error type, "did you mean", numbers, config tables."""

from __future__ import annotations

import dataclasses
import difflib
import math


class ConfigError(ValueError):
    """A bad configuration: the message is one line for the user."""


def did_you_mean(key: str, allowed, otherwise: str | None = None) -> str:
    """`` (did you mean 'X'?)`` for the allowed name closest to ``key``; else ``otherwise``
    (default: ``; allowed: A, B, ...``)."""
    close = difflib.get_close_matches(key, list(allowed), n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f"; allowed: {', '.join(sorted(allowed))}" if otherwise is None else otherwise


def unknown_key(key: str, where: str, allowed) -> ConfigError:
    """The error for config key ``where + key``, which is not one of ``allowed``."""
    return ConfigError(f"unknown config key '{where}{key}'{did_you_mean(key, allowed)}")


def check_number(
    key: str, value, lower: float | None = None, upper: float | None = None, strict_lower: bool = False, what: str = "config key"
) -> float:
    """``value`` as a float if it is a finite number within the bounds, else :class:`ConfigError`
    naming ``what`` ``key`` (``strict_lower``: above ``lower``, not equal to it)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = repr(value) if isinstance(value, str) else value
        raise ConfigError(f"{what} '{key}' = {shown!s}: must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"{what} '{key}' = {value}: must be finite")
    low = lower is not None and (value < lower or (strict_lower and value <= lower))
    high = upper is not None and value > upper
    if low or high:
        if lower is not None and upper is not None and math.isfinite(upper) and not strict_lower:
            bound = f"in [{lower:g}, {upper:g}]"
        elif low:
            bound = f"{'>' if strict_lower else '>='} {lower:g}"
        else:
            bound = f"<= {upper:g}"
        raise ConfigError(f"{what} '{key}' = {value}: must be {bound}")
    return float(value)


def option(
    default,
    doc: str,
    unit: str = "",
    choices: tuple | None = None,
    lower: float | None = None,
    upper: float | None = None,
    strict_lower: bool = False,
):
    """A config key of a section dataclass: its default, documentation, unit and allowed values
    (read by :func:`check_value` and the generated reference, docs/config.md)."""
    meta = {"doc": doc, "unit": unit, "choices": choices, "lower": lower, "upper": upper, "strict_lower": strict_lower}
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(t) -> str:
    return {float: "a number", int: "an integer", str: "a string", bool: "true or false", tuple: "a list of numbers"}[t]


def check_value(key: str, value, field: dataclasses.Field):
    """Type and range check of one value against a section field's metadata (:func:`option`)."""
    meta, kind = field.metadata, type(field.default)
    shown = repr(value) if isinstance(value, str) else value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' = {shown!s}: must be {_type_name(float)}")
        value = float(value)
    elif kind is int and not isinstance(value, bool) and isinstance(value, int):
        pass
    elif kind is tuple:
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            raise ConfigError(f"config key '{key}' = {shown!s}: must be {_type_name(tuple)}")
        value = tuple(float(v) for v in value)
    elif not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' = {shown!s}: must be {_type_name(kind)}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"config key '{key}' = {shown!s}: allowed values are {', '.join(map(str, meta['choices']))}")
    if kind is float or kind is int:
        lo, hi = meta.get("lower"), meta.get("upper")
        strict = bool(meta.get("strict_lower"))
        # one bound at a time, as the section's reference states them
        check_number(key, value, lo, None, strict)
        check_number(key, value, None, hi)
    return value


def parse_section(cls, raw, where: str):
    """The section dataclass ``cls`` from the TOML table ``raw`` at ``where`` (e.g. ``"run."``),
    every key checked by :func:`check_value`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where.rstrip('.')}' must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise unknown_key(key, where, fields)
    return cls(**{k: check_value(where + k, v, fields[k]) for k, v in raw.items()})
