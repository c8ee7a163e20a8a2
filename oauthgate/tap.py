"""``twistd oauthgate``: parse options, load the configuration, build the service.

Configuration and plugin problems end start-up here with exit status 1 and one line per
problem on stderr, never a traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver
from twisted.python.components import Componentized

from oauthgate.config.alpha import to_alpha_yaml
from oauthgate.config.flags import Options
from oauthgate.config.loader import display_config, load_config
from oauthgate.errors import ConfigError, PluginError
from oauthgate.plugins import Plugins
from oauthgate.systemd import Notifier

__all__ = ["Options", "makeService"]


def _fail(lines: list[str]) -> SystemExit:
    for line in lines:
        print(f"oauthgate: {line}", file=sys.stderr)
    return SystemExit(1)


def _convert(options: Options) -> SystemExit:
    """Print the alpha YAML for the legacy configuration (``--convert-config-to-alpha``)."""
    config, _ = load_config(options.given, os.environ, options["config"], check=False)
    sys.stdout.write(to_alpha_yaml(config))
    sys.stdout.flush()
    return SystemExit(0)


class _QuietStandardLog(MultiService):
    """The service for ``--standard-logging=false`` under twistd.

    twistd builds its log observer after makeService, from the application's ILogObserver
    component when there is one. Given the application as parent, this sets that component
    to the observer twistd would build itself (``--logfile``, ``--syslog`` or stdout),
    filtered by :func:`oauthgate.logs.quiet_standard_log`.
    """

    def __init__(self, service: IService, twistd_options: Any) -> None:
        MultiService.__init__(self)
        self._twistd_options = twistd_options
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            from twisted.scripts._twistd_unix import UnixAppLogger

            from oauthgate.logs import quiet_standard_log

            observer = UnixAppLogger(self._twistd_options)._getLogObserver()
            parent.setComponent(ILogObserver, quiet_standard_log(observer))
        MultiService.setServiceParent(self, parent)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor  # the one import of the global reactor

    from oauthgate.service import build_service

    try:
        if options["convert-config-to-alpha"]:
            raise _convert(options)
        config, warnings = load_config(
            options.given, os.environ, options["config"], alpha_file=options["alpha-config"]
        )
        for warning in warnings:
            print(f"oauthgate: warning: {warning}", file=sys.stderr)
        if options["display-config"]:
            sys.stdout.write(display_config(config))
            sys.stdout.flush()
            raise SystemExit(0)
        # systemd's environment, read once here: $NOTIFY_SOCKET, $WATCHDOG_USEC (and _PID).
        notifier = Notifier.from_environ(os.environ, pid=os.getpid())
        service = build_service(
            config, reactor=reactor, plugins=Plugins.from_entry_points(), notifier=notifier
        )
        twistd_options = getattr(options, "parent", None)  # twistd's own ServerOptions
        if not config.standard_logging and twistd_options is not None:
            return _QuietStandardLog(service, twistd_options)
        return service
    except ConfigError as e:
        raise _fail(list(e.problems)) from None
    except PluginError as e:
        raise _fail(str(e).splitlines()) from None
    except (OSError, ValueError) as e:
        # Anything validation did not foresee (an unreadable file, say): still one line.
        raise _fail([f"cannot start: {e}"]) from None
