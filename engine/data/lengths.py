"""The one policy for rows longer than ``training.max_length``, and its counts: a row is cut
to max_length when its prompt leaves room for some of the answer, and dropped (counted, the
first one named) when the prompt alone fills max_length. Only when no row is left is the
dataset refused. The Data screen, ``loradeck train`` and the run's ``info`` event all show
these counts. Light module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from loradeck.engine.errors import LoradeckError


@dataclass(frozen=True)
class LengthCounts:
    """Rows kept (some of them cut to max length) and dropped."""

    max_length: int
    kept: int = 0
    cut: int = 0
    dropped: int = 0
    first_dropped: str | None = None   # where the first dropped row is (file:LINE, row N)

    def line(self) -> str:
        """``40 rows kept, 3 cut to max length 512; 2 dropped: their prompt fills it (first:
        data.jsonl:52)``."""
        text = f"{self.kept:,} rows kept, {self.cut:,} cut to max length {self.max_length}"
        if self.dropped:
            text += (f"; {self.dropped:,} dropped: their prompt fills it"
                     + (f" (first: {self.first_dropped})" if self.first_dropped else ""))
        return text

    def fields(self) -> dict[str, int | str | None]:
        """As event fields (the run's ``info`` event)."""
        return {"kept_rows": self.kept, "truncated_rows": self.cut,
                "dropped_rows": self.dropped, "first_dropped": self.first_dropped}


def count(lengths: Sequence[int], first_trained: Sequence[int], max_length: int,
          where: Callable[[int], str], plain: bool = False) -> tuple[LengthCounts, list[int]]:
    """The counts and the indices of the rows kept, from each row's token count and the
    position of its first trained token; ``where(i)`` names row ``i``. Plain text keeps every
    row (a long one is cut into max_length blocks)."""
    if plain:
        cut = sum(1 for n in lengths if int(n) > max_length)
        return LengthCounts(max_length, len(lengths), cut), list(range(len(lengths)))
    kept = [i for i, first in enumerate(first_trained) if int(first) < max_length]
    dropped = len(first_trained) - len(kept)
    first_dropped = None
    if dropped:
        first_dropped = where(next(i for i, first in enumerate(first_trained)
                                   if int(first) >= max_length))
    cut = sum(1 for i in kept if int(lengths[i]) > max_length)
    return LengthCounts(max_length, len(kept), cut, dropped, first_dropped), kept


def refuse_when_empty(counts: LengthCounts, shortest_prompt: int, source: str) -> None:
    """Nothing left to train on: say so, and what max length would keep rows."""
    if counts.kept == 0 and counts.dropped:
        raise LoradeckError(
            f"in every row ({counts.dropped:,}) the prompt alone fills training.max_length="
            f"{counts.max_length} tokens, so no answer token is left to learn", kind="data",
            where=source, hint=f"raise training.max_length above {shortest_prompt}")
