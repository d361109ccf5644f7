"""Name -> factory registries for envs, sandboxes and policies.

Built-ins register lazily by import path so that importing the package stays
cheap; third-party packages plug in through the entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from ._errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, LookupError):
    """Raised for a name no registry entry answers to; the message lists the known names."""


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str):
        self.kind = kind
        self.group = entry_point_group
        self._items: dict[str, T | str] = {}
        self._hints: dict[str, str] = {}
        self._options: dict[str, type] = {}

    def register(self, name: str, obj: T | None = None, *, install_hint: str = "", options: type | None = None):
        """Register `obj` under `name`; without `obj`, return a decorator. `options` is the typed options class
        the entry takes (a dataclass with a `parse` classmethod), if it has one."""
        self._note(name, install_hint, options)
        if obj is not None:
            self._items[name] = obj
            return obj

        def deco(o: T) -> T:
            self._items[name] = o
            return o

        return deco

    def register_lazy(self, name: str, target: str, *, install_hint: str = "", options: type | None = None) -> None:
        """Register "module:attr", imported on first lookup."""
        self._items[name] = target
        self._note(name, install_hint, options)

    def _note(self, name: str, install_hint: str, options: type | None) -> None:
        if install_hint:
            self._hints[name] = install_hint
        if options is not None:
            self._options[name] = options

    def registered_options(self) -> dict[str, type]:
        """Options classes registered by name (those of plug-ins that carry their own are not imported)."""
        return dict(sorted(self._options.items()))

    def options(self, name: str) -> type | None:
        """The typed options class registered with `name`, or the entry's own `options` attribute, or None."""
        return self._options.get(name) or getattr(self.get(name), "options", None)

    def _load_entry_points(self) -> None:
        for ep in entry_points(group=self.group):
            self._items.setdefault(ep.name, ep.value)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> T:
        if name not in self._items:  # entry points only add names, so a known one needs no rescan (a slow one)
            self._load_entry_points()
        if name not in self._items:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}")
        item = self._items[name]
        if isinstance(item, str):
            item = self._items[name] = _import(item, self.kind, name, self._hints.get(name, ""))
        return item  # type: ignore[return-value]


def _import(target: str, kind: str, name: str, hint: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        extra = f" ({hint})" if hint else ""
        raise UnknownNameError(f"{kind} {name!r} cannot load: {e}{extra}") from e
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj

