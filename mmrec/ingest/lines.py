"""Reading text files line by line in bounded memory: gzip or plain, through polars' streaming
scan, with Python's zlib where polars stops (a truncated or corrupt gzip file)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mmrec.ingest.errors import DataError, Truncation


def require_file(path: Path) -> None:
    """DataError naming ``path`` when it is not a file."""
    if not path.is_file():
        raise DataError(
            f"{path}: file not found; check the path (or leave it unset to download it)"
        )


@dataclass
class Block:
    """Whole lines of a file: ``data`` (bytes, ends with a newline unless it is the file's last
    line) and the 1-based number of its first line."""

    data: bytes
    first_line: int

    @property
    def num_lines(self) -> int:
        """Lines in ``data`` (blank ones included)."""
        return self.data.count(b"\n") + (not self.data.endswith(b"\n"))


_GZIP_MAGIC = b"\x1f\x8b"
_BOM = "\ufeff".encode()
_RAW = 1 << 16  # compressed bytes fed at once: where corrupt data is, to this much


class LineBlocks:
    """Iterates a text file (``.gz`` or plain) as blocks of whole lines, in bounded memory.

    A UTF-8 byte order mark at the start is dropped. A gzip stream that ends early (an
    interrupted download) or turns corrupt does not raise: every complete line before that
    point is yielded, then ``truncated`` is set with ``last_line`` (the last complete line),
    ``tail`` (the partial line after it) and ``bytes_read``, so that the caller decides
    (``truncation()`` says where the file breaks off). A file that is not gzip at all raises
    DataError.

    Args:
        path: The file.
        block_bytes: About this many decompressed bytes per block (whole lines).
    """

    def __init__(self, path: str | Path, block_bytes: int = 1 << 25) -> None:
        self.path = Path(path)
        require_file(self.path)
        self.block_bytes = block_bytes
        self.truncated: str | None = None  # why the stream ended early
        self.last_line = 0
        self.tail = b""
        self.bytes_read = 0  # compressed bytes decoded

    def truncation(self) -> Truncation | None:
        """Where a truncated or corrupt gzip file breaks off (None: it does not)."""
        if self.truncated is None:
            return None
        size = self.path.stat().st_size
        return Truncation(str(self.path), size, self.bytes_read, self.last_line, self.truncated)

    def __iter__(self) -> Iterator[Block]:
        chunks = self._gunzip() if self.path.suffix == ".gz" else self._plain()
        line, rest, start = 1, b"", True
        for chunk in chunks:
            if start and chunk:  # a UTF-8 byte order mark is not part of the first line
                chunk, start = chunk.removeprefix(_BOM), False
            data = rest + chunk if rest else chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            rest = data[cut:]
            block = Block(data[:cut] if rest else data, line)
            line += block.data.count(b"\n")
            self.last_line = line - 1
            yield block
        if self.truncated is not None:
            self.tail = rest
        elif rest:
            self.last_line = line
            yield Block(rest, line)

    def _plain(self) -> Iterator[bytes]:
        with open(self.path, "rb") as fh:
            while chunk := fh.read(self.block_bytes):
                yield chunk

    def _gunzip(self) -> Iterator[bytes]:
        """Decompressed pieces of about ``block_bytes``; sets ``truncated`` on an early end."""
        with open(self.path, "rb") as fh:
            head = fh.read(2)
            if not head:
                return
            if head != _GZIP_MAGIC:
                raise DataError(
                    f"{self.path}: not a valid gzip file (it does not start with the gzip "
                    "signature); download it again."
                )
            fh.seek(0)
            unz, fed = zlib.decompressobj(31), False
            out: list[bytes] = []
            size = 0
            while not self.truncated and (raw := fh.read(_RAW)):
                read = len(raw)
                while raw:
                    try:
                        piece = unz.decompress(raw)
                    except zlib.error as err:
                        self.truncated = f"corrupt data: {err}"
                        read = 0
                        break
                    fed, raw = True, b""
                    out.append(piece)
                    size += len(piece)
                    if unz.eof:  # a member ends; another may follow (concatenated gzip)
                        raw = unz.unused_data.lstrip(b"\x00")
                        unz, fed = zlib.decompressobj(31), False
                self.bytes_read += read
                if size >= self.block_bytes:
                    yield b"".join(out)
                    out, size = [], 0
            if fed and not unz.eof and not self.truncated:
                self.truncated = "the gzip stream stops before its end marker"
            if out:
                yield b"".join(out)


class LineScan:
    """The lines of a text file (``.gz`` or plain) as small frames of ``line`` (1-based number)
    and ``text`` (null for an empty line), in bounded memory.

    Fast path: polars' streaming CSV scan with one column and no quoting (polars decompresses
    and splits in its own threads while the caller works on the previous frame; invalid UTF-8
    becomes U+FFFD). If polars fails midway (a truncated or corrupt gzip file), or meets a line
    it does not read whole (one holding its separator ``\x1f``, never unescaped in valid JSON,
    or an empty line, which may be a cut one), the lines from there on come from
    ``LineBlocks`` (Python zlib), which reads every line exactly and, at the end, sets
    ``last_line`` and ``truncation`` (where a truncated file breaks off).

    Args:
        path: The file.
        columns: Columns computed from ``text`` inside the scan (in polars' threads, in
            parallel with the caller), e.g. an id match that selects lines.
    """

    #: Lines per frame (about: polars may cut a frame short). Small frames keep polars' scan
    #: and the caller's work on a frame overlapping, and memory low.
    BATCH = 8192

    def __init__(self, path: str | Path, columns: dict[str, pl.Expr] | None = None) -> None:
        self.path = Path(path)
        require_file(self.path)
        self.columns = columns or {}
        self.truncation: Truncation | None = None
        self.last_line = 0

    def __iter__(self) -> Iterator[pl.DataFrame]:
        done = 0
        try:
            if self.path.suffix == ".gz":
                with open(self.path, "rb") as fh:
                    head = fh.read(2)
                if head and head != _GZIP_MAGIC:
                    raise DataError(
                        f"{self.path}: not a valid gzip file (it does not start with the gzip "
                        "signature); download it again."
                    )
            scan = pl.scan_csv(
                self.path,
                has_header=False,
                separator="\x1f",  # never unescaped in valid JSON: a line is one field
                quote_char=None,
                schema={"text": pl.String, "_more": pl.String},  # _more: after a \x1f
                missing_columns="insert",
                encoding="utf8-lossy",
                truncate_ragged_lines=True,
            )
            # a line cut at a \x1f, or empty (maybe cut at a leading \x1f): not read whole
            cut = pl.col("text").is_null() | pl.col("_more").is_not_null()
            scan = scan.with_row_index("line", offset=1).with_columns(**self.columns, _cut=cut)
            for batch in scan.collect_batches(engine="streaming", chunk_size=self.BATCH):
                whole = batch.height
                if batch["_cut"].any():  # this line and the rest are read in Python
                    whole = int(batch["_cut"].arg_true()[0])
                if whole:
                    out = batch.slice(0, whole).drop("_more", "_cut")
                    yield out.with_columns(pl.col("line").cast(pl.UInt64))
                    done += whole
                if whole < batch.height:
                    break
            else:
                self.last_line = done
                return
        except (pl.exceptions.PolarsError, OSError):
            pass  # read the rest (and find where the file breaks) with Python's zlib
        yield from self._python(done)

    def _python(self, skip: int) -> Iterator[pl.DataFrame]:
        """Lines after the first ``skip``, from ``LineBlocks``."""
        blocks = LineBlocks(self.path)
        for block in blocks:
            first, n = block.first_line, block.num_lines
            if first + n - 1 <= skip:
                continue
            text = block.data.decode("utf-8", "replace").split("\n")
            if block.data.endswith(b"\n"):
                text.pop()
            lines = pl.Series("text", text, dtype=pl.String).str.strip_suffix("\r")
            frame = pl.DataFrame(
                {"line": pl.int_range(first, first + n, dtype=pl.UInt64, eager=True), "text": lines}
            ).with_columns(pl.when(pl.col("text") != "").then(pl.col("text")).alias("text"))
            frame = frame.filter(pl.col("line") > skip).with_columns(**self.columns)
            for lo in range(0, frame.height, self.BATCH):
                yield frame.slice(lo, self.BATCH)
        self.last_line = blocks.last_line
        self.truncation = blocks.truncation()
