"""Reading claims out of token and userinfo payloads."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["coerce_groups", "get_claim"]


def get_claim(claims: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``claims``, or None when absent.

    ``path`` may be dotted (``ocs.data.email`` walks nested objects); a literal key that
    contains the dots wins when present (``https://example.com/groups``).
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def coerce_groups(value: Any) -> tuple[str, ...]:
    """A groups claim as a tuple of strings.

    None gives no groups; a scalar becomes a one-element list; entries that are not
    strings (numbers, objects) are JSON-encoded, as oauth2-proxy does.
    """
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(_as_text(v) for v in value)
    return (_as_text(value),)
