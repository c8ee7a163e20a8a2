"""What one upstream is, however it was configured (``--upstream`` or the alpha YAML)."""

from __future__ import annotations

import attrs

__all__ = ["UpstreamSpec"]


@attrs.frozen
class UpstreamSpec:
    """One entry of oauth2-proxy's ``upstreamConfig.upstreams``.

    ``path`` is a prefix when it ends with "/", an exact path otherwise, and a regular
    expression when it starts with "^" (then ``rewrite_target`` may use its groups as
    ``$1``). ``uri`` is ``http(s)://``, ``unix://`` or ``file://``; static upstreams have
    ``static=True`` and answer ``static_code`` themselves. Durations are seconds.
    """

    id: str
    path: str
    uri: str = ""
    rewrite_target: str = ""
    static: bool = False
    static_code: int = 200
    flush_interval: float = 1.0
    pass_host_header: bool = True
    proxy_websockets: bool = True
    timeout: float = 30.0
    insecure_skip_tls_verify: bool = False
    disable_keep_alives: bool = False
