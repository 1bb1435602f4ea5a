"""Registry errors: one line naming the bad input and the closest valid names."""

import difflib
from collections.abc import Iterable


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    pool = list(candidates)
    matches = difflib.get_close_matches(name.lower(), pool, n=n, cutoff=0.6)
    if len(matches) < n:
        # Prefix / substring hits help with truncated names ("vit_l14" -> "vit_l14_pn")
        for cand in pool:
            if len(matches) >= n:
                break
            if cand not in matches and (cand.startswith(name.lower()) or name.lower() in cand):
                matches.append(cand)

    return matches


class RegistryError(ValueError):
    """Base for registry errors (a ValueError, as Birder raises)."""


class UnknownNameError(RegistryError, KeyError):
    """An architecture or entry name that is not registered.

    Subclasses both KeyError and ValueError so Birder-style ``except`` clauses keep working.
    """

    def __init__(self, kind: str, name: str, candidates: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.suggestions = closest(name, candidates)
        if len(self.suggestions) > 0:
            msg = f"unknown {kind} '{name}'; closest: {', '.join(self.suggestions)}"
        else:
            msg = f"unknown {kind} '{name}'"
        if hint:
            msg = f"{msg} ({hint})"

        super().__init__(msg)
        self.message = msg

    def __str__(self) -> str:
        return self.message


class InvalidWeightsEntryError(RegistryError):
    """A pretrained entry that fails validation; the message names the offending key."""
