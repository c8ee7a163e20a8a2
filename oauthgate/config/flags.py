"""The command line of ``twistd oauthgate``, generated from the options table.

Every option in :func:`~oauthgate.config.options.option_specs` becomes ``--<flag>``. Bool
options work both as plain flags (``--skip-provider-button``) and Go style with a value
(``--cookie-secure=false``); list options may be repeated and each value may be a comma
list. Only what the command line actually says is recorded (:attr:`Options.given`), so the
loader can let flags beat the environment, which beats the file, which beats the defaults.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from twisted.python import usage

from oauthgate._version import __version__
from oauthgate.config.durations import DURATION_HINT, format_duration, parse_duration
from oauthgate.config.options import OptionSpec, option_specs

__all__ = [
    "Options",
    "format_default",
    "options_markdown",
    "parse_bool",
    "parse_text",
    "split_list",
]

_TRUE = frozenset({"1", "t", "true", "y", "yes", "on"})
_FALSE = frozenset({"0", "f", "false", "n", "no", "off"})


def parse_bool(text: str) -> bool:
    """``true``/``false`` and the usual spellings (``1``/``0``, ``yes``/``no``, ``on``/``off``).

    Raises:
        ValueError: anything else.
    """
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def split_list(text: str) -> tuple[str, ...]:
    """A comma list as a tuple, items stripped, empty items dropped (``""`` is no items)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def parse_text(spec: OptionSpec, text: str) -> object:
    """The value of ``spec`` written as ``text`` (a flag or environment value).

    Returns a bool, int, float seconds, ``tuple[str, ...]`` or str, as ``spec.kind`` says.

    Raises:
        ValueError: ``text`` does not fit the kind. The message says what would be right
            and, for secret options, never repeats the value.
    """
    try:
        if spec.kind == "bool":
            return parse_bool(text)
        if spec.kind == "int":
            try:
                return int(text.strip(), 10)
            except ValueError:
                raise ValueError(f"expected a whole number, got {text!r}") from None
        if spec.kind == "duration":
            return parse_duration(text)
    except ValueError:
        if spec.secret:
            raise ValueError(f"invalid value for a {spec.kind} option") from None
        raise
    if spec.kind == "list":
        return split_list(text)
    return text


def format_default(spec: OptionSpec) -> str:
    """The default of ``spec`` as a user would write it (``168h0m0s``, ``true``, ``a,b``)."""
    default = spec.default
    if spec.secret:
        return ""
    if spec.kind == "bool":
        return "true" if default else "false"
    if spec.kind == "duration":
        return format_duration(float(default))
    if spec.kind == "list":
        return ",".join(default)
    return str(default)


def _flag_help(spec: OptionSpec) -> str:
    text = spec.help
    if spec.kind == "bool":
        text += f" (--{spec.flag} or --{spec.flag}=true|false)"
    elif spec.kind == "list":
        text += " (repeat the flag or give a comma list)"
    elif spec.kind == "duration" and "duration" not in text:
        text += f" ({DURATION_HINT})"
    default = format_default(spec)
    if spec.secret:
        file_flags = [s.flag for s in option_specs() if s.key == spec.key + "_file"]
        where = f"--{file_flags[0]} or " if file_flags else ""
        text += f" [secret: prefer {where}the environment]"
    elif default:
        text += f" [default: {default}]"
    return text


class Options(usage.Options):
    """``twistd oauthgate`` options: parses and records, never builds anything live."""

    synopsis = "[options]"
    longdesc = (
        "An authenticating reverse proxy (an oauth2-proxy work-alike). Each option can also be "
        "given as an environment variable OAUTHGATE_<CFG_KEY> (or OAUTH2_PROXY_<CFG_KEY>) or as "
        "<cfg_key> in the TOML file named by --config. Flags beat the environment, which beats "
        "the file, which beats the defaults."
    )

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self._given: dict[str, object] = {}
        self._bool_values: dict[str, list[bool]] = {}
        self.config_file: str | None = None
        self["config"] = None
        self["alpha-config"] = None
        self["convert-config-to-alpha"] = False
        self["display-config"] = False

    @property
    def given(self) -> dict[str, object]:
        """The options the command line set, by cfg key, parsed to their kind."""
        return dict(self._given)

    def opt_config(self, path: str) -> None:
        """the oauth2-proxy style TOML config file"""
        self.config_file = path
        self["config"] = path

    def opt_alpha_config(self, path: str) -> None:
        """the alpha YAML config file: upstreams, injected headers, listen address, provider"""
        self["alpha-config"] = path

    def opt_convert_config_to_alpha(self) -> None:
        """print the alpha YAML for the legacy options given (flags, environment, --config)
        and exit"""
        self["convert-config-to-alpha"] = True

    def opt_display_config(self) -> None:
        """print the effective configuration (every option, secrets masked) as TOML and exit"""
        self["display-config"] = True

    def postOptions(self) -> None:
        """Refuse options that cannot go together."""
        if self["alpha-config"] is not None and self["convert-config-to-alpha"]:
            raise usage.UsageError(
                "--alpha-config and --convert-config-to-alpha cannot be used together: "
                "convert a legacy configuration first, then load the result with --alpha-config"
            )

    def opt_version(self) -> None:
        """print the oauthgate version and exit"""
        print(f"oauthgate {__version__}")
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse ``options`` (default ``sys.argv[1:]``); Go-style ``--bool=value`` included.

        Raises:
            usage.UsageError: a bad flag or value. Under twistd (which sets ``parent``) it
                is one line on stderr and exit status 1 instead: twistd would print the
                whole ``--help`` text above the one line that matters.
        """
        args = list(sys.argv[1:] if options is None else options)
        try:
            usage.Options.parseOptions(self, self._take_bool_values(args))
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Our own messages name the flag (--flag: ...); getopt's need a pointer.
            hint = "" if str(e).startswith("--") else " (see: twistd oauthgate --help)"
            print(f"oauthgate: {e}{hint}", file=sys.stderr)
            raise SystemExit(1) from None

    def _take_bool_values(self, args: list[str]) -> list[str]:
        """Rewrite ``--flag=value`` of bool options to ``--flag``, queueing the value.

        getopt knows only flags without values; the queue keeps the order of repeated
        flags, so the last one given wins as usual.
        """
        takes_value = {name.rstrip("="): name.endswith("=") for name in self.longOpt}
        bools = {spec.flag: spec for spec in option_specs() if spec.kind == "bool"}
        rewritten: list[str] = []
        index = 0
        while index < len(args):
            arg = args[index]
            index += 1
            if arg == "--" or not arg.startswith("--"):
                rewritten.append(arg)
                if arg == "--" or not arg.startswith("-"):
                    rewritten.extend(args[index:])
                    break
                continue
            name, has_value, value = arg[2:].partition("=")
            full = _resolve(name, takes_value)
            if full is None:
                rewritten.append(arg)
                continue
            if full in bools:
                if has_value:
                    try:
                        parsed = parse_bool(value)
                    except ValueError as e:
                        raise usage.UsageError(f"--{full}: {e}") from None
                else:
                    parsed = True
                self._bool_values.setdefault(full, []).append(parsed)
                rewritten.append(f"--{full}")
                continue
            rewritten.append(arg)
            if takes_value[full] and not has_value and index < len(args):
                rewritten.append(args[index])
                index += 1
        return rewritten

    def _set_bool(self, spec: OptionSpec) -> None:
        queued = self._bool_values.get(spec.flag)
        self._given[spec.key] = queued.pop(0) if queued else True

    def _set_text(self, spec: OptionSpec, text: str) -> None:
        try:
            value = parse_text(spec, text)
        except ValueError as e:
            raise usage.UsageError(f"--{spec.flag}: {e}") from None
        if spec.kind == "list":
            previous = self._given.get(spec.key, ())
            assert isinstance(previous, tuple) and isinstance(value, tuple)
            value = previous + value
        self._given[spec.key] = value


def _resolve(name: str, takes_value: dict[str, bool]) -> str | None:
    """The long option ``name`` stands for, as getopt resolves it (exact or unique prefix)."""
    if name in takes_value:
        return name
    candidates = [known for known in takes_value if known.startswith(name)]
    return candidates[0] if len(candidates) == 1 else None


def _make_handler(spec: OptionSpec) -> Callable[..., None]:
    """An ``opt_*`` method for ``spec``; usage.Options tells flags by their signature."""
    handler: Callable[..., None]
    if spec.kind == "bool":

        def flag(self: Options) -> None:
            self._set_bool(spec)

        handler = flag
    else:

        def parameter(self: Options, text: str) -> None:
            self._set_text(spec, text)

        handler = parameter
    handler.__doc__ = _flag_help(spec)
    handler.__name__ = "opt_" + spec.flag.replace("-", "_")
    return handler


def _install_handlers(cls: type[Options]) -> None:
    for spec in option_specs():
        name = "opt_" + spec.flag.replace("-", "_")
        if hasattr(cls, name):
            raise RuntimeError(f"option --{spec.flag} clashes with a built-in option")
        setattr(cls, name, _make_handler(spec))


_install_handlers(Options)


def options_markdown() -> str:
    """A Markdown table of every option: flag, cfg key, environment variable, kind, default."""
    lines = [
        "| Flag | Config key | Environment | Type | Default | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in option_specs():
        default = format_default(spec)
        lines.append(
            "| `--{flag}` | `{key}` | `{env}` | {kind} | {default} | {help}{secret} |".format(
                flag=spec.flag,
                key=spec.key,
                env=spec.env_names[0],
                kind=spec.kind,
                default=f"`{default}`" if default else "",
                help=_escape_cell(spec.help),
                secret=" (secret)" if spec.secret else "",
            )
        )
    return "\n".join(lines) + "\n"


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|")
