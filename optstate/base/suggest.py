"""'Did you mean ...?' for every name a user types: optimizers, schedulers, commands,
hyperparameters, container keys, parameter names. One rule (``difflib``'s ratio, at
least 0.6, case-insensitive, the best three) and one wording, used everywhere.

    >>> unknown("optimizer", "adamm", ["adam", "adamw", "sgd"])
    "unknown optimizer 'adamm'; did you mean 'adam'?"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(word: str, candidates: Iterable[object], n: int = 3) -> list[str]:
    """The candidates closest to ``word``: the best one and any as close (up to ``n``),
    none when nothing is close (``difflib.get_close_matches``'s 0.6 cutoff). Compared
    case-insensitively; returned as spelled in ``candidates``."""
    spelled: dict[str, str] = {}
    for c in candidates:
        spelled.setdefault(str(c).lower(), str(c))
    typed = str(word).lower()
    if typed in spelled:
        return [spelled[typed]]
    found = difflib.get_close_matches(typed, list(spelled), n=n, cutoff=0.6)
    if not found:
        return []

    def ratio(c: str) -> float:
        return difflib.SequenceMatcher(None, typed, c).ratio()

    best = ratio(found[0])
    tied = {f for f in found if ratio(f) >= best - 1e-9}
    return [spelled[c] for c in spelled if c in tied]  # in the candidates' order


def did_you_mean(word: str, candidates: Iterable[object]) -> str:
    """``"; did you mean 'adam'?"`` (to append to a message), or ``""``."""
    matches = close_matches(word, candidates)
    if not matches:
        return ""
    quoted = [repr(m) for m in matches]
    either = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {either}?"


def unknown(what: str, word: str, candidates: Iterable[object]) -> str:
    """``"unknown optimizer 'adamm'; did you mean 'adam'?"``"""
    return f"unknown {what} {str(word)!r}{did_you_mean(word, candidates)}"
