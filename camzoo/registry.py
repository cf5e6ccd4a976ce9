"""One registry shape for every kind of named entry: methods, model kinds, metrics, datasets.

Why one class: names are what users type and what results stores persist, so every registry must
answer the same questions the same way — is the name taken, what did you mean, and (after a rename)
which entry an old name now stands for. An alias resolves to its entry everywhere (lookups,
``in``), but listings show canonical names only, so a store written under an old name still loads
and reports without the old name reappearing in new tables.
"""

from __future__ import annotations

import difflib
from typing import Generic, TypeVar
from collections.abc import Callable, Iterable, Iterator, Mapping

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names -> entries in registration order, with aliases and "did you mean" errors.

    ``what`` names the entries in messages ("method", "dataset"); ``normalise`` (optional) maps a
    name to a lookup key so that e.g. "Grad-CAM" finds "gradcam" when the key is unambiguous.
    """

    def __init__(self, what: str, normalise: Callable[[str], str] | None = None) -> None:
        self.what = what
        self._normalise = normalise
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    # --- writing -------------------------------------------------------------------------------
    def add(self, name: str, entry: T, aliases: Iterable[str] = ()) -> T:
        """Register ``entry`` as ``name`` (re-adding the same entry is a no-op) and its old names."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty name; got {name!r}")
        if name in self._aliases:
            raise ValueError(f"{name!r} is already an alias of the {self.what} {self._aliases[name]!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"a {self.what} called {name!r} is already registered")
        self._entries[name] = entry
        for alias in aliases:
            self.alias(alias, name)
        return entry

    def alias(self, old: str, name: str) -> None:
        """Let ``old`` (e.g. a name a results store was written under) stand for ``name``."""
        if name not in self._entries:
            raise ValueError(f"cannot alias {old!r} to {name!r}: no {self.what} is registered as {name!r}")
        if old in self._entries or self._aliases.get(old, name) != name:
            raise ValueError(f"{old!r} already names a {self.what}; pick another alias")
        self._aliases[old] = name

    def remove(self, name: str) -> None:
        """Unregister ``name`` and its aliases (tests and interactive sessions that re-register)."""
        canonical = self.canonical(name)
        del self._entries[canonical]
        for alias in [a for a, target in self._aliases.items() if target == canonical]:
            del self._aliases[alias]

    # --- reading -------------------------------------------------------------------------------
    def find(self, name: str) -> str | None:
        """The canonical name for ``name`` (itself, an alias, or a normalised spelling); None if unknown."""
        if not isinstance(name, str):
            return None
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        if self._normalise is not None:
            key = self._normalise(name)
            matches = {n for n in self._entries if self._normalise(n) == key}
            matches |= {target for alias, target in self._aliases.items() if self._normalise(alias) == key}
            if len(matches) == 1:
                return matches.pop()
        return None

    def canonical(self, name: str) -> str:
        """The canonical name for ``name``; a ValueError that lists close matches when unknown."""
        found = self.find(name)
        if found is None:
            raise ValueError(self.unknown_message(name))
        return found

    def lookup(self, name: str) -> T:
        """The entry for ``name`` (see :meth:`canonical`)."""
        return self._entries[self.canonical(name)]

    def unknown_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), [*self._entries, *self._aliases], n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.what} {name!r}.{hint} Available: {', '.join(self._entries) or 'none'}"

    def aliases(self) -> dict[str, str]:
        """Old name -> canonical name."""
        return dict(self._aliases)

    def __getitem__(self, name: str) -> T:
        found = self.find(name)
        if found is None:
            raise KeyError(name)
        return self._entries[found]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {list(self._entries)})"
