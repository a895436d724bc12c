"""DataError and the bad-line accounting shared by every reader."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class DataError(ValueError):
    """Unusable input data; the message names the file and line (or column) and says what to do."""


@dataclass(frozen=True)
class Truncation:
    """Where a gzip file breaks off (an interrupted download, or corrupt data).

    Args:
        path: The file.
        size: The file's size in bytes.
        bytes_read: Compressed bytes decoded before the stream broke (the whole file when it
            only lacks its end; to 64 KiB before corrupt data).
        last_line: The last complete line (1-based; 0: none).
        reason: What the decompressor met.
    """

    path: str
    size: int
    bytes_read: int
    last_line: int
    reason: str

    def error(self, option: bool = True) -> str:
        """The one-line DataError message; ``option``: name ``--allow_truncated``."""
        what = (
            f"{self.path}: truncated gzip file: its compressed data breaks off after "
            f"{self.bytes_read:,} of the file's {self.size:,} bytes ({self.reason}); line "
            f"{self.last_line} is the last complete line. The download was probably interrupted:"
            " delete the file and download it again"
        )
        if not option:
            return what + "."
        return (
            f"{what}, or pass --allow_truncated true to keep its complete lines "
            f"(1..{self.last_line})."
        )

    def kept(self) -> str:
        """What a prepare that allows truncated files says it did."""
        return (
            f"{self.path}: truncated gzip file, kept its first {self.last_line} lines "
            f"(--allow_truncated; {self.bytes_read:,} of {self.size:,} bytes read, "
            f"{self.reason})."
        )


@dataclass
class BadLines:
    """Bad lines of one input file: counted by reason, the first few kept for the message.

    Args:
        path: The file the lines come from.
        total: Number of data lines (rows) in the file, good and bad.
        truncated: Where a gzip file that ends early breaks off (its tail is one bad line,
            see ``truncate``).
    """

    path: str
    total: int = 0
    counts: Counter = field(default_factory=Counter)
    examples: list[tuple[int, str]] = field(default_factory=list)
    truncated: Truncation | None = None

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

    def truncate(self, cut: Truncation, reason: str, allow: bool) -> None:
        """Books the partial tail of a truncated file as one bad line under ``reason`` when
        ``allow``; else raises the DataError that says what to do."""
        if not allow:
            raise DataError(cut.error())
        self.add(reason, cut.last_line + 1, "the file ends here, in the middle of a line")
        self.total += 1
        self.truncated = cut

    def truncation_record(self) -> dict | None:
        """The meta.json entry of a truncated file read with ``--allow_truncated``: its size,
        bytes read, last complete line and the data lines kept (its tail excluded)."""
        cut = self.truncated
        if cut is None:
            return None
        return {
            "file": cut.path,
            "size": cut.size,
            "bytes_read": cut.bytes_read,
            "last_complete_line": cut.last_line,
            "lines_kept": self.total - 1,
        }

    @property
    def num_bad(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        """One paragraph: how many, why, and the first offending lines."""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        first = "; ".join(f"line {line}: {msg}" for line, msg in self.examples)
        return f"{self.path}: {self.num_bad} of {self.total} lines bad ({reasons}); {first}"

    def check(self, max_bad_fraction: float) -> None:
        """Raises DataError if the bad share passes ``max_bad_fraction``, else prints the skips.
        The tail of a truncated file (allowed, see ``truncate``) is not held against it."""
        if not self.num_bad:
            return
        tail = 1 if self.truncated else 0
        frac = (self.num_bad - tail) / max(self.total - tail, 1)
        lead = f"{self.truncated.kept()} " if self.truncated else ""
        if frac > max_bad_fraction:
            raise DataError(
                f"{lead}{self.describe()}. That is {frac:.2%} of the file, more than "
                f"max_bad_fraction={max_bad_fraction:.2%}: fix the file (or the column mapping), "
                "or raise --max_bad_fraction to skip these lines."
            )
        print(f"mmrec prepare: {lead}skipped {self.describe()}")
