"""Configuration: the options table, the command line, loading and validation."""

from oauthgate.config.durations import format_duration, parse_duration
from oauthgate.config.flags import Options, options_markdown
from oauthgate.config.loader import DEMO_IDP_PORT, DEMO_UPSTREAM_PORT, load_config
from oauthgate.config.options import Config, OptionSpec, option_specs
from oauthgate.config.validate import listen_description, validate

__all__ = [
    "DEMO_IDP_PORT",
    "DEMO_UPSTREAM_PORT",
    "Config",
    "OptionSpec",
    "Options",
    "format_duration",
    "listen_description",
    "load_config",
    "option_specs",
    "options_markdown",
    "parse_duration",
    "validate",
]
