"""The request and auth logs: oauth2-proxy's line templates, written without twisted.logger.

Request and auth lines bypass twisted.logger's observer chain (an event dict, filters,
the legacy wrapper, a timestamp formatted per event and a write per line), which cost
about half of ``/oauth2/auth``'s throughput. Here a template such as
``{{.Client}} - {{.Username}} [{{.Timestamp}}] {{.StatusCode}}`` is compiled once at
start-up into a ``%``-format string and a tuple of getters; a line is one ``%`` and one
append to a buffer, the timestamp is formatted once per second, and the buffer is written
to the file (or stdout) at least every :data:`FLUSH_INTERVAL` seconds and at stop.

Never logged: tokens, cookie values, secrets. The request URI keeps its query string
(as oauth2-proxy does) but the values of :data:`REDACTED_PARAMETERS` are replaced.
twisted.logger keeps the standard log (:func:`quiet_standard_log` leaves only its errors).
"""

from __future__ import annotations

import json
import os
import re
import select
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, Literal
from urllib.parse import unquote_plus

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
)
from twisted.web.server import Request
from zope.interface import implementer

from oauthgate.config.options import Config
from oauthgate.errors import ConfigError

__all__ = [
    "AUTH_FIELDS",
    "DEFAULT_AUTH_FORMAT",
    "DEFAULT_REQUEST_FORMAT",
    "FLUSH_INTERVAL",
    "REDACTED_PARAMETERS",
    "REQUEST_FIELDS",
    "AccessLog",
    "LogFile",
    "LogService",
    "StandardLogFilter",
    "Template",
    "access_log_from_config",
    "compile_template",
    "quiet_standard_log",
    "redact_uri",
]

DEFAULT_REQUEST_FORMAT = (
    "{{.Client}} - {{.RequestID}} - {{.Username}} [{{.Timestamp}}] {{.Host}} "
    "{{.RequestMethod}} {{.Upstream}} {{.RequestURI}} {{.Protocol}} {{.UserAgent}} "
    "{{.StatusCode}} {{.ResponseSize}} {{.RequestDuration}}"
)
DEFAULT_AUTH_FORMAT = (
    "{{.Client}} - {{.RequestID}} - {{.Username}} [{{.Timestamp}}] [{{.Status}}] {{.Message}}"
)
REQUEST_FIELDS = (
    "Client",
    "RequestID",
    "Username",
    "Timestamp",
    "Host",
    "RequestMethod",
    "Upstream",
    "RequestURI",
    "Protocol",
    "UserAgent",
    "StatusCode",
    "ResponseSize",
    "RequestDuration",
)
AUTH_FIELDS = ("Client", "RequestID", "Username", "Timestamp", "Status", "Message")
REDACTED_PARAMETERS = frozenset(
    {
        "code",
        "state",
        "access_token",
        "id_token",
        "refresh_token",
        "token",
        "client_secret",
        "password",
    }
)
FLUSH_INTERVAL = 0.5
_BUFFER_LIMIT = 64 * 1024  # written at once past this many bytes, without waiting
_PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_REDACTED = "REDACTED"
_UNKNOWN: Any = object()
_MAX_REMEMBERED = 256  # quoted paths and user agents the request log keeps

LogFormat = Literal["text", "json"]
Value = str | int | float


@attrs.frozen
class Template:
    """A compiled line template: a ``%``-format string and the field names it fills,
    in order. Compiled once; :meth:`render` never parses anything."""

    source: str
    fmt: str
    fields: tuple[str, ...]

    def render(self, values: Sequence[Value]) -> str:
        """The text line for ``values`` (one per field, in :attr:`fields` order)."""
        return self.fmt % tuple(values)


def compile_template(source: str, allowed: Iterable[str]) -> Template:
    """Compile oauth2-proxy's ``{{.Name}}`` template. Raises ValueError naming every
    placeholder not in ``allowed``, and the allowed ones."""
    allowed = tuple(allowed)
    unknown = [m.group(1) for m in _PLACEHOLDER.finditer(source) if m.group(1) not in allowed]
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {', '.join('{{.' + u + '}}' for u in unknown)}; "
            f"known: {', '.join(allowed)}"
        )
    parts: list[str] = []
    fields: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(source):
        parts.append(source[position : match.start()].replace("%", "%%"))
        parts.append("%s")
        fields.append(match.group(1))
        position = match.end()
    parts.append(source[position:].replace("%", "%%"))
    return Template(source, "".join(parts), tuple(fields))


def redact_uri(uri: str) -> str:
    """``uri`` with the values of :data:`REDACTED_PARAMETERS` in its query replaced."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    # Split on "&" and ";" and compare keys as a server decodes them (%63ode is code),
    # so no spelling of a redacted name slips through.
    parts = re.split(r"([&;])", query)
    changed = False
    for i in range(0, len(parts), 2):
        key, eq, _ = parts[i].partition("=")
        if eq and unquote_plus(key).strip().lower() in REDACTED_PARAMETERS:
            parts[i] = f"{key}={_REDACTED}"
            changed = True
    return f"{path}?{''.join(parts)}" if changed else uri


#: Go's ``%q``-style quoting (oauth2-proxy quotes the URI and the user agent): what
#: ``json.dumps(text, ensure_ascii=False)`` gives for a string, without its dispatch.
_quote: Callable[[str], str] = json.encoder.encode_basestring


def _whole_lines(lines: list[bytes], limit: int) -> Iterator[bytes]:
    """``lines`` joined into pieces of at most ``limit`` bytes (a longer line alone)."""
    piece: list[bytes] = []
    size = 0
    for line in lines:
        if piece and size + len(line) > limit:
            yield b"".join(piece)
            piece, size = [], 0
        piece.append(line)
        size += len(line)
    if piece:
        yield b"".join(piece)


class LogFile:
    """A buffered, size-rotated log file (or an already open stream such as stdout).

    ``write`` only appends to a buffer; ``flush`` writes it (the caller flushes on a
    timer). Past ``max_size`` bytes the file is renamed ``NAME.1`` (older backups move
    to ``.2``, ``.3``...), at most ``max_backups`` are kept (0: all) and backups older
    than ``max_age`` seconds are removed (0: kept). ``shared``: other processes write
    to the same stream (``--workers``), so each write is whole lines of at most
    ``PIPE_BUF`` bytes, which a pipe never interleaves with theirs.
    """

    def __init__(
        self,
        path: str = "",
        *,
        stream: IO[bytes] | None = None,
        max_size: int = 0,
        max_backups: int = 0,
        max_age: float = 0.0,
        now: Callable[[], float] = time.time,
        shared: bool = False,
    ) -> None:
        self.path = path
        self._shared = shared
        self._max_size = max_size if path else 0
        self._max_backups = max_backups
        self._max_age = max_age
        self._now = now
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._stream: IO[bytes] | None = stream
        self._owned = stream is None
        self._size = 0
        if path:
            self._stream = open(path, "ab")  # noqa: SIM115 (kept open)
            self._size = self._stream.tell()

    def _open(self) -> IO[bytes]:
        if self._stream is None:
            if self.path:
                self._stream = open(self.path, "ab")  # noqa: SIM115
            else:
                # fd 1 itself, opened at the first write: twistd replaces sys.stdout with
                # a file logging through twisted.logger, which is what this module avoids.
                self._stream = open(os.dup(1), "ab", buffering=0)  # noqa: SIM115
        return self._stream

    def write(self, line: bytes) -> None:
        """Buffer one line (with its newline); rotate first if it would pass max_size."""
        pending = self._size + self._buffered
        if self._max_size and pending and pending + len(line) > self._max_size:
            self.flush()
            self._rotate()
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= _BUFFER_LIMIT:
            self.flush()

    def flush(self) -> None:
        """Write the buffered lines."""
        if not self._buffer:
            return
        lines = self._buffer
        self._buffer = []
        self._buffered = 0
        stream = self._open()
        for data in _whole_lines(lines, select.PIPE_BUF) if self._shared else [b"".join(lines)]:
            stream.write(data)
            self._size += len(data)
        stream.flush()

    def close(self) -> None:
        """Flush, and close the file if this object opened it."""
        self.flush()
        if self._owned and self._stream is not None:
            self._stream.close()
            self._stream = None

    def backups(self) -> list[str]:
        """The existing backup files, newest (``.1``) first."""
        found = []
        n = 1
        while os.path.exists(f"{self.path}.{n}"):
            found.append(f"{self.path}.{n}")
            n += 1
        return found

    def _rotate(self) -> None:
        self._open().close()
        existing = self.backups()
        keep = self._max_backups
        for n in range(len(existing), 0, -1):
            source = f"{self.path}.{n}"
            if keep and n >= keep:
                os.remove(source)
            else:
                os.replace(source, f"{self.path}.{n + 1}")
        os.replace(self.path, f"{self.path}.1")
        if self._max_age:
            limit = self._now() - self._max_age
            for backup in self.backups():
                if os.path.getmtime(backup) < limit:
                    os.remove(backup)
        self._stream = open(self.path, "ab")  # noqa: SIM115
        self._size = 0


class AccessLog:
    """Writes request and auth lines with compiled templates (text) or as JSON objects.

    ``client_ip`` names the client of a request (the gate's trusted-proxy aware rule).
    Raises ValueError at construction for a template with unknown placeholders.
    """

    def __init__(
        self,
        out: LogFile,
        clock: IReactorTime,
        *,
        request_format: str = DEFAULT_REQUEST_FORMAT,
        auth_format: str = DEFAULT_AUTH_FORMAT,
        log_format: LogFormat = "text",
        local_time: bool = True,
        client_ip: Callable[[Request], str | None] | None = None,
    ) -> None:
        self._out = out
        self._clock = clock
        self._json = log_format == "json"
        self._local_time = local_time
        self._client_ip = client_ip
        self._ts_second = -1
        self._ts_text = ""
        # Quoted paths (without a query) and user agents, by their raw bytes.
        self._quoted_uris: dict[bytes, str] = {}
        self._quoted_agents: dict[bytes | None, str] = {}
        try:
            self.request_template = compile_template(request_format, REQUEST_FIELDS)
        except ValueError as e:
            raise ValueError(f"request_logging_format: {e}") from None
        try:
            self.auth_template = compile_template(auth_format, AUTH_FIELDS)
        except ValueError as e:
            raise ValueError(f"auth_logging_format: {e}") from None
        self._render_request = (
            None if self._json else _request_renderer(self.request_template, self._namespace())
        )
        request_getters: dict[str, Callable[[Request, float], Value]] = {
            "Client": lambda r, d: self._client(r),
            "RequestID": lambda r, d: _request_id(r),
            "Username": lambda r, d: getattr(r, "oauthgate_user", "") or "-",
            "Timestamp": lambda r, d: self.timestamp(),
            "Host": lambda r, d: _text(r.getHeader(b"host")),
            "RequestMethod": lambda r, d: _text(r.method),
            "Upstream": lambda r, d: getattr(r, "oauthgate_upstream", "") or "-",
            "RequestURI": self._uri_json if self._json else self._uri_text,
            "Protocol": lambda r, d: _text(r.clientproto),
            "UserAgent": self._agent_json if self._json else self._agent_text,
            "StatusCode": lambda r, d: r.code,
            "ResponseSize": lambda r, d: r.sentLength,
            "RequestDuration": (lambda r, d: round(d, 3)) if self._json else _duration_text,
        }
        self._request_getters = tuple(request_getters[f] for f in self.request_template.fields)

    def _namespace(self) -> dict[str, Any]:
        """What the generated request renderer may call (see :func:`_request_renderer`)."""
        client_ip = self._client_ip
        if client_ip is None:

            def client(request: Request) -> str:
                return getattr(request.getClientAddress(), "host", None) or "-"

        else:

            def client(request: Request) -> str:
                # The gate keeps what client_ip gave when it authorized the request.
                found = getattr(request, "oauthgate_client_ip", _UNKNOWN)
                return (client_ip(request) if found is _UNKNOWN else found) or "-"

        # The same few paths and user agents come again and again: their quoted text is
        # remembered (a path with a query is not: it may carry a code, even redacted).
        uris = self._quoted_uris
        agents = self._quoted_agents

        def uri(raw: bytes) -> str:
            text = uris.get(raw)
            if text is None:
                text = _quote(redact_uri(_text(raw)))
                if b"?" not in raw:
                    if len(uris) >= _MAX_REMEMBERED:
                        uris.clear()
                    uris[raw] = text
            return text

        def agent(values: Sequence[bytes] | None) -> str:
            raw = values[-1] if values else None
            text = agents.get(raw)
            if text is None:
                text = _quote(_text(raw, ""))
                if len(agents) >= _MAX_REMEMBERED:
                    agents.clear()
                agents[raw] = text
            return text

        return {
            "_client": client,
            "_request_id": _request_id_from,
            "_timestamp": self.timestamp,
            "_last": _last_text,
            "_uri": uri,
            "_agent": agent,
        }

    def _client(self, request: Request) -> str:
        if self._client_ip is not None:
            return self._client_ip(request) or "-"
        return getattr(request.getClientAddress(), "host", None) or "-"

    def timestamp(self) -> str:
        """The current second, formatted as oauth2-proxy does (cached per second)."""
        second = int(self._clock.seconds())
        if second != self._ts_second:
            parts = time.localtime(second) if self._local_time else time.gmtime(second)
            self._ts_text = time.strftime("%Y/%m/%d %H:%M:%S", parts)
            self._ts_second = second
        return self._ts_text

    def _uri_text(self, request: Request, duration: float) -> str:
        return _quote(redact_uri(_text(request.uri)))

    def _uri_json(self, request: Request, duration: float) -> str:
        return redact_uri(_text(request.uri))

    def _agent_text(self, request: Request, duration: float) -> str:
        return _quote(_text(request.getHeader(b"user-agent"), ""))

    def _agent_json(self, request: Request, duration: float) -> str:
        return _text(request.getHeader(b"user-agent"), "")

    def request(self, request: Request, duration: float) -> None:
        """Log one finished request that took ``duration`` seconds."""
        render = self._render_request
        if render is not None:
            self._out.write(render(request, duration).encode("utf-8", "replace"))
            return
        values = [g(request, duration) for g in self._request_getters]
        self._emit("request", self.request_template, values)

    def auth(self, request: Request, username: str, status: str, message: str) -> None:
        """Log one auth event: ``status`` is AuthSuccess, AuthFailure or AuthError."""
        facts: dict[str, Value] = {}
        for field in self.auth_template.fields:
            if field == "Client":
                facts[field] = self._client(request)
            elif field == "RequestID":
                facts[field] = _request_id(request)
            elif field == "Username":
                facts[field] = username or "-"
            elif field == "Timestamp":
                facts[field] = self.timestamp()
            elif field == "Status":
                facts[field] = status
            else:
                facts[field] = message
        self._emit("auth", self.auth_template, [facts[f] for f in self.auth_template.fields])

    def _emit(self, kind: str, template: Template, values: list[Value]) -> None:
        if self._json:
            record: dict[str, Any] = {"log": kind}
            record.update(zip(template.fields, values, strict=True))
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        else:
            line = template.render(values)
        self._out.write(line.encode("utf-8", "replace") + b"\n")

    def flush(self) -> None:
        """Write what is buffered."""
        self._out.flush()

    def close(self) -> None:
        """Flush and close the output."""
        self._out.close()


def _text(value: bytes | None, missing: str = "-") -> str:
    return value.decode("utf-8", "replace") if value else missing


def _last_text(values: Sequence[bytes] | None, missing: str) -> str:
    """The last of a header's ``values`` as text; ``missing`` when absent or empty."""
    return values[-1].decode("utf-8", "replace") if values and values[-1] else missing


def _request_id_from(request: Request, header: Callable[[bytes], Sequence[bytes] | None]) -> str:
    """:func:`_request_id`, given the request's ``getRawHeaders``."""
    rid = getattr(request, "oauthgate_request_id", None)
    if rid is None:
        return _last_text(header(b"x-request-id"), "-")[:64]
    return str(rid)


# The Python expression of each request field in the text format, given the request
# ``r``, its ``getRawHeaders`` ``h`` and the duration ``d``; then how it goes into the line.
_TEXT_FIELDS: dict[str, tuple[str, str]] = {
    "Client": ("_client(r)", "%s"),
    "RequestID": ("_request_id(r, h)", "%s"),
    "Username": ('getattr(r, "oauthgate_user", "") or "-"', "%s"),
    "Timestamp": ("_timestamp()", "%s"),
    "Host": ('_last(h(b"host"), "-")', "%s"),
    "RequestMethod": ('r.method.decode("utf-8", "replace") if r.method else "-"', "%s"),
    "Upstream": ('getattr(r, "oauthgate_upstream", "") or "-"', "%s"),
    "RequestURI": ("_uri(r.uri)", "%s"),
    "Protocol": ('r.clientproto.decode("utf-8", "replace") if r.clientproto else "-"', "%s"),
    "UserAgent": ('_agent(h(b"user-agent"))', "%s"),
    "StatusCode": ("r.code", "%s"),
    "ResponseSize": ("r.sentLength", "%s"),
    "RequestDuration": ("d", "%.3f"),
}


def _request_renderer(
    template: Template, namespace: dict[str, Any]
) -> Callable[[Request, float], str]:
    """A function giving the text line (with its newline) of a finished request.

    Generated once, at start-up, from ``template``: one ``%`` of a tuple whose items are
    the fields' expressions, in template order (so a field absent from the template
    costs nothing). Only the fixed expressions of :data:`_TEXT_FIELDS` are put in the
    code: the template's own text reaches it as a value (``_fmt``), never as code.
    """
    parts: list[str] = []
    position = 0
    expressions = []
    for match in _PLACEHOLDER.finditer(template.source):
        expression, conversion = _TEXT_FIELDS[match.group(1)]
        parts.append(template.source[position : match.start()].replace("%", "%%"))
        parts.append(conversion)
        expressions.append(f"({expression})")
        position = match.end()
    parts.append(template.source[position:].replace("%", "%%"))
    code = (
        "def render(r, d):\n"
        "    h = r.requestHeaders.getRawHeaders\n"
        f"    return _fmt % ({''.join(e + ', ' for e in expressions)})\n"
    )
    scope = {**namespace, "_fmt": "".join(parts) + "\n"}
    exec(compile(code, f"<oauthgate request log: {template.source[:40]!r}>", "exec"), scope)
    render: Callable[[Request, float], str] = scope["render"]
    return render


def _duration_text(request: Request, duration: float) -> str:
    return f"{duration:.3f}"


def _request_id(request: Request) -> str:
    rid = getattr(request, "oauthgate_request_id", None)
    if rid is None:
        header = request.getHeader(b"x-request-id")
        return header.decode("utf-8", "replace")[:64] if header else "-"
    return str(rid)


class LogService(Service):
    """Flushes an :class:`AccessLog` every :data:`FLUSH_INTERVAL` seconds while running,
    and flushes and closes it at stop."""

    name = "access-log"

    def __init__(self, log: AccessLog, clock: IReactorTime) -> None:
        self.log = log
        self._loop = LoopingCall(log.flush)
        self._loop.clock = clock

    def startService(self) -> None:
        Service.startService(self)
        self._loop.start(FLUSH_INTERVAL, now=False)

    def stopService(self) -> None:
        Service.stopService(self)
        if self._loop.running:
            self._loop.stop()
        self.log.close()


@implementer(ILogFilterPredicate)
class StandardLogFilter:
    """Drops oauthgate's standard log events (``--standard-logging=false``); everything
    else (Twisted's own, twistd's) passes."""

    def __call__(self, event: LogEvent) -> PredicateResult:
        namespace = str(event.get("log_namespace", ""))
        if namespace == "oauthgate" or namespace.startswith("oauthgate."):
            result: PredicateResult = PredicateResult.no
        else:
            result = PredicateResult.maybe
        return result


def quiet_standard_log(observer: ILogObserver) -> ILogObserver:
    """The standard log observer for ``--standard-logging=false``: ``observer`` (twistd's
    own) seeing only errors and critical events, whoever logs them (oauthgate, Twisted,
    twistd). The request and auth lines are not twisted.logger events: they still go out."""
    return FilteringLogObserver(observer, [LogLevelFilterPredicate(LogLevel.error)])


def access_log_from_config(
    config: Config,
    clock: IReactorTime,
    client_ip: Callable[[Request], str | None],
    *,
    shared: bool = False,
) -> AccessLog | None:
    """The request/auth log writer the options describe; None when both logs are off.
    ``shared``: other processes write to the same output (see :class:`LogFile`).

    Raises ConfigError for an unknown placeholder or log format, or an unopenable file.
    """
    if not (config.request_logging or config.auth_logging):
        return None
    problems = []
    if config.logging_format not in ("text", "json"):
        problems.append(f"logging_format: must be text or json, got {config.logging_format!r}")
    for key, allowed in (
        ("request_logging_format", REQUEST_FIELDS),
        ("auth_logging_format", AUTH_FIELDS),
    ):
        try:
            compile_template(getattr(config, key), allowed)
        except ValueError as e:
            problems.append(f"{key}: {e}")
    if problems:
        raise ConfigError(problems)
    try:
        out = LogFile(
            config.logging_filename,
            max_size=config.logging_max_size * 1024 * 1024,
            max_backups=config.logging_max_backups,
            max_age=config.logging_max_age * 24 * 3600.0,
            shared=shared,
        )
    except OSError as e:
        raise ConfigError([f"logging_filename: cannot open: {e.strerror or e}"]) from None
    return AccessLog(
        out,
        clock,
        request_format=config.request_logging_format,
        auth_format=config.auth_logging_format,
        log_format="json" if config.logging_format == "json" else "text",
        local_time=config.logging_local_time,
        client_ip=client_ip,
    )
