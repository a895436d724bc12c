"""DataError and the bad-line accounting shared by every reader."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """Unusable input data; the message names the file and line (or column) and says what to do."""


@dataclass
class BadLines:
    """Bad lines of one input file: counted by reason, the first few kept for the message.

    Args:
        path: The file the lines come from.
        total: Number of data lines (rows) in the file, good and bad.
        truncated: The message of a gzip file that ends early (its tail is one bad line).
    """

    path: str
    total: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)
    truncated: str | None = None

    def add(self, reason: str, line: int, message: str) -> None:
        """Counts one bad ``line`` (1-based) under ``reason``; keeps the first 5 messages."""
        self.counts[reason] += 1
        if len(self.examples) < 5:
            self.examples.append((line, message))

    def add_many(self, reason: str, lines: list[int], message: str) -> None:
        """Counts every line of ``lines`` under ``reason`` with one shared ``message``."""
        for line in lines[: max(0, 5 - len(self.examples))]:
            self.examples.append((line, message))
        self.counts[reason] += len(lines)

    @property
    def num_bad(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        """One paragraph: how many, why, and the first offending lines."""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        first = "; ".join(f"line {line}: {msg}" for line, msg in self.examples)
        return f"{self.path}: {self.num_bad} of {self.total} lines bad ({reasons}); {first}"

    def check(self, max_bad_fraction: float) -> None:
        """Raises DataError if the bad share passes ``max_bad_fraction``, else prints the skips."""
        if not self.num_bad:
            return
        frac = self.num_bad / max(self.total, 1)
        lead = f"{self.truncated} " if self.truncated else ""
        if frac > max_bad_fraction:
            raise DataError(
                f"{lead}{self.describe()}. That is {frac:.2%} of the file, more than "
                f"max_bad_fraction={max_bad_fraction:.2%}: fix the file (or the column mapping), "
                "or raise --max_bad_fraction to skip these lines."
            )
        print(f"mmrec prepare: {lead}skipped {self.describe()}")
