"""The finite-state machine of a constrained beam search (:mod:`captioner.generation.constrained`): the
constraints, the states their lengths make, and which state's hypotheses can move into which."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class Constraint:
    """Token ids that must appear together in the caption, tokens that may not come right before them, and whether
    they must open the caption."""

    tokens: tuple[int, ...]
    forbid_before: tuple[int, ...] = ()
    at_start: bool = False


def normalise(constraints: list) -> tuple[Constraint, ...]:
    """Distinct non-empty constraints (:class:`Constraint` or token-id lists), shortest first (the state machine
    depends only on their lengths)."""
    items = [c if isinstance(c, Constraint) else Constraint(tuple(c)) for c in constraints]
    unique = list({c.tokens: c for c in items if c.tokens}.values())
    return tuple(sorted(unique, key=lambda c: len(c.tokens)))


def search_states(lengths: tuple[int, ...]) -> list[tuple[frozenset, tuple[int, int] | None]]:
    """The states of the search for constraints of these lengths: each set of met constraints, alone or in the
    middle of a phrase ``(c, k)`` (its first k tokens written). The empty set comes first, the full set last."""
    subsets = [frozenset(s) for n in range(len(lengths) + 1) for s in combinations(range(len(lengths)), n)]
    partial = [(met, (c, k)) for met in subsets for c in range(len(lengths)) if c not in met
               for k in range(1, lengths[c])]
    return [(met, None) for met in subsets[:-1]] + partial + [(subsets[-1], None)]


def transitions(lengths: tuple[int, ...], states: list) -> list[list[tuple[int, str, object]]]:
    """For each state, where its hypotheses come from: ``(source, "free", [c, ...])`` (any token but the first
    tokens of the unmet one-token constraints c) or ``(source, "only", (c, k))`` (token k of constraint c, forced)."""
    index = {state: i for i, state in enumerate(states)}
    into: list[list] = [[] for _ in states]
    for source, (met, open_phrase) in enumerate(states):
        if open_phrase is None:
            unmet = [c for c in range(len(lengths)) if c not in met]
            into[source].append((source, "free", [c for c in unmet if lengths[c] == 1]))
            for c in unmet:
                target = (met | {c}, None) if lengths[c] == 1 else (met, (c, 1))
                into[index[target]].append((source, "only", (c, 0)))
        else:
            c, k = open_phrase
            target = (met | {c}, None) if k + 1 == lengths[c] else (met, (c, k + 1))
            into[index[target]].append((source, "only", (c, k)))
    return into


__all__ = ["Constraint", "normalise", "search_states", "transitions"]
