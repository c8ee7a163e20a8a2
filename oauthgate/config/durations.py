"""Durations written as Go (and so oauth2-proxy) writes them: ``168h``, ``1h30m``, ``500ms``."""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["DURATION_HINT", "format_duration", "parse_duration"]

DURATION_HINT = "a duration such as 168h, 1h30m, 90s or 500ms"

_UNITS: dict[str, Fraction] = {
    "ns": Fraction(1, 1_000_000_000),
    "us": Fraction(1, 1_000_000),
    "\u00b5s": Fraction(1, 1_000_000),  # micro sign
    "\u03bcs": Fraction(1, 1_000_000),  # Greek mu
    "ms": Fraction(1, 1_000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_BARE_NUMBER = re.compile(r"\d+\.?\d*|\.\d+")
_NANOSECONDS_PER_SECOND = 1_000_000_000


def parse_duration(text: str) -> float:
    """Seconds in ``text``, a Go duration (``1h30m``, ``1.5h``, ``500ms``, ``0``).

    A bare number (``90``, ``2.5``) is taken as seconds. Negative durations are refused.

    Raises:
        ValueError: ``text`` is not a duration or is negative; the message says what is expected.
    """
    stripped = text.strip()
    body = stripped
    negative = False
    if body[:1] in ("+", "-"):
        negative = body[0] == "-"
        body = body[1:]
    if not body:
        raise ValueError(f"expected {DURATION_HINT}, got {text!r}")
    if _BARE_NUMBER.fullmatch(body):
        total = Fraction(body)
    else:
        total = Fraction(0)
        position = 0
        while position < len(body):
            match = _PART.match(body, position)
            if match is None:
                raise ValueError(f"expected {DURATION_HINT}, got {text!r}")
            total += Fraction(match.group(1)) * _UNITS[match.group(2)]
            position = match.end()
    if negative and total != 0:
        raise ValueError(f"must not be negative, got {text!r}")
    return float(total)


def format_duration(seconds: float) -> str:
    """``seconds`` written as Go's ``Duration.String`` does: 604800 -> ``168h0m0s``."""
    nanoseconds = round(Fraction(seconds) * _NANOSECONDS_PER_SECOND)
    sign = "-" if nanoseconds < 0 else ""
    value = abs(nanoseconds)
    if value == 0:
        return "0s"
    if value < _NANOSECONDS_PER_SECOND:
        if value < 1_000:
            return f"{sign}{value}ns"
        if value < 1_000_000:
            return f"{sign}{_decimal(value, 1_000)}\u00b5s"
        return f"{sign}{_decimal(value, 1_000_000)}ms"
    whole_seconds, fraction = divmod(value, _NANOSECONDS_PER_SECOND)
    hours, rest = divmod(whole_seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = _decimal(secs * _NANOSECONDS_PER_SECOND + fraction, _NANOSECONDS_PER_SECOND) + "s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def _decimal(value: int, unit: int) -> str:
    """``value / unit`` as a decimal without trailing zeros (``1500, 1000`` -> ``1.5``)."""
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{fraction:0{digits}d}".rstrip("0")
