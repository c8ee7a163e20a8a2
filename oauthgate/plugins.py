"""Finding providers: the ``oauthgate.providers`` entry-point group.

Built-in providers are registered through the same entry points as third-party ones.
The plugin set is an object, not a global, so tests build it from a dict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

import attrs
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from oauthgate.errors import PluginError
from oauthgate.interfaces import IProviderFactory

__all__ = ["PROVIDERS_GROUP", "Plugins"]

PROVIDERS_GROUP = "oauthgate.providers"


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    if dist is None:
        return f"entry point {ep.name!r} ({ep.value})"
    return f"entry point {ep.name!r} ({ep.value}) of {dist.name} {dist.version}"


@attrs.frozen
class Plugins:
    """The provider factories this process can use, by ``--provider`` name.

    Entry points are loaded only when named, so a broken plugin that the configuration
    does not use cannot stop start-up.
    """

    _providers: Mapping[str, object]  # name -> IProviderFactory, or an EntryPoint to load
    _origins: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_entry_points(cls, eps: Iterable[EntryPoint] | None = None) -> Plugins:
        """Read the entry-point group; two distributions claiming one name is an error."""
        found: dict[str, EntryPoint] = {}
        problems = []
        for ep in eps if eps is not None else entry_points(group=PROVIDERS_GROUP):
            if ep.name in found and found[ep.name].value != ep.value:
                problems.append(
                    f"provider {ep.name!r} is registered twice: by {_origin(found[ep.name])} "
                    f"and by {_origin(ep)}; uninstall one"
                )
            found[ep.name] = ep
        if problems:
            raise PluginError("\n".join(problems))
        return cls(dict(found), {name: _origin(ep) for name, ep in found.items()})

    @classmethod
    def from_dict(cls, factories: Mapping[str, object]) -> Plugins:
        return cls(dict(factories), {name: f"factory {name!r}" for name in factories})

    def names(self) -> list[str]:
        return sorted(self._providers)

    def provider_factory(self, name: str) -> IProviderFactory:
        """The factory for ``--provider=name``, loaded and checked.

        Raises PluginError naming the plugin (entry point, distribution, version) when it
        is unknown, fails to import, or does not provide IProviderFactory.
        """
        if name not in self._providers:
            installed = ", ".join(self.names()) or "none"
            raise PluginError(
                f"provider: unknown provider {name!r}; installed providers: {installed}"
            )
        factory = self._providers[name]
        origin = self._origins.get(name, name)
        if isinstance(factory, EntryPoint):
            try:
                factory = factory.load()
            except Exception as e:
                raise PluginError(
                    f"provider {name!r}: {origin} failed to load: {type(e).__name__}: {e}"
                ) from None
        try:
            verifyObject(IProviderFactory, factory)
        except Invalid as e:
            message = " ".join(str(e).split())
            raise PluginError(
                f"provider {name!r}: {origin} does not provide IProviderFactory: {message}"
            ) from None
        if getattr(factory, "name", None) != name:
            raise PluginError(
                f"provider {name!r}: {origin} calls itself {getattr(factory, 'name', None)!r}"
            )
        return factory  # type: ignore[return-value]
