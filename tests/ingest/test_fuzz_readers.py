"""Property-based tests of every raw reader (2014, 2018, 2023 reviews and benchmark CSVs,
tabular files, 2014/2018/2023 metadata) on generated malformed input: random bytes, NUL, deep
nesting, huge fields, wrong types, BOM, CRLF, mixed second/millisecond timestamps. Every
non-blank line is kept or dropped under a reason, and nothing but a DataError escapes."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mmrec.calendar import to_unix
from mmrec.ingest.errors import BadLines, DataError
from mmrec.ingest.items import META_KEYS
from mmrec.ingest.metalines import read_meta_lines
from mmrec.ingest.prepare import READERS, PrepareConfig
from mmrec.ingest.readers import AMAZON2014_REVIEW_KEYS, AMAZON2023_REVIEW_KEYS, TimeWindow


def fuzz(examples: int):
    """Hypothesis settings: ``examples`` inputs (1,300 over the 8 tests: about 35 s on one
    core of a shared machine, within the 60 s the tests may take), the same on every run."""
    return settings(
        max_examples=examples,
        deadline=None,  # one example may hold a 1 MB field or 100,000 levels of nesting
        derandomize=True,  # the same inputs on every run: a failure is never another's flake
        database=None,  # nothing written into the working tree
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


WINDOW = TimeWindow(to_unix("1995-01-01"), to_unix("2030-01-01"))
FIRST, LAST = to_unix("1996-01-01"), to_unix("2024-01-01")

ids = st.text("ABCXYZ0189", min_size=1, max_size=6)
seconds = st.integers(FIRST, LAST)
#: Values of the wrong type (or none) for any field.
wrong = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["2014-05-13", "13 05, 2014", "five", "", " ", "1e3", "NaN", "\u0000"]),
)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


#: JSON text nested 100 .. 100,000 levels (Python's json and polars stop near 1,000).
deep = st.sampled_from([100, 990, 1023, 1025, 1500, 100_000]).map(_nested)
#: A field of 100 kB .. 1 MB.
huge = st.integers(100_000, 1_000_000).map(lambda n: "x" * n)


@st.composite
def good_review(draw, keys: dict[str, str], ms: bool) -> tuple[dict, tuple[str, str, int]]:
    """A valid review record (its time in seconds or milliseconds) and what a reader keeps."""
    user, item, ts = draw(ids), draw(ids), draw(seconds)
    unit = 1000 if (ms or draw(st.booleans())) else 1  # mixed units within a file
    record = {
        keys["user_id"]: user,
        keys["item_id"]: item,
        keys["timestamp"]: ts * unit + (draw(st.integers(0, 999)) if unit > 1 else 0),
        keys["rating"]: draw(st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0])),
        keys["review"]: draw(st.one_of(st.text(max_size=30), huge)),
    }
    extras = {  # keys of the official files that readers do not read
        "style": {"Size:": draw(st.text(max_size=5))},
        "vote": "1,234",
        "image": ["http://i/x.jpg"],
        "helpful": [0, 1],
        "reviewTime": "05 13, 2014",
    }
    chosen = draw(st.sets(st.sampled_from(list(extras)), max_size=3))
    return record | {k: extras[k] for k in chosen}, (user, item, ts)


#: Random bytes (invalid UTF-8, NUL, CR, \x1f...) as one line.
random_bytes = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))


@st.composite
def bad_review(draw, keys: dict[str, str]) -> bytes:
    """A line a reader must drop (or keep) without failing."""
    record, _ = draw(good_review(keys, False))
    field = draw(st.sampled_from(list(record)))
    line = draw(
        st.one_of(
            random_bytes,
            st.text(max_size=60).map(lambda t: t.replace("\n", "")),
            deep,
            st.just('{"a": ' * 100_000 + "1" + "}" * 100_000),
            st.sampled_from(["null", "1", '"text"', "[]", "{}", "NaN", "{", '{"a": 1e400}']),
            st.just(json.dumps(record | {field: draw(wrong)})),
            st.just(json.dumps({k: v for k, v in record.items() if k != field})),
            st.just(json.dumps(record)[: draw(st.integers(1, 40))]),  # cut short
            st.just(json.dumps(record).replace('"', "", 1)),
            st.just(json.dumps(record)[:-1] + f', "{field}": ' + _nested(1500) + "}"),
            st.just(json.dumps(record)[:-1] + ', "extra": "\x00"}'),  # raw NUL: not JSON
            st.just(json.dumps(record | {field: "a\u0000b"})),  # escaped NUL: JSON
            st.just("\ufeff" + json.dumps(record)),  # a BOM inside the file
            st.just(json.dumps(record).replace(", ", ",\r ", 1)),  # a lone CR
            st.just(json.dumps(record | {field: draw(huge)})),
            st.just(json.dumps(record) + " trailing"),
            st.just(json.dumps(record).replace("}", ', "NaN": NaN}')),
            st.sampled_from(["", "   ", "\t", "\x0b", "\u3000", "\x1f"]),  # blank lines
        )
    )
    return line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")


def _file_bytes(lines: list[bytes], crlf: bool, bom: bool) -> bytes:
    newline = b"\r\n" if crlf else b"\n"
    return ("\ufeff".encode() if bom else b"") + newline.join(lines) + newline


def _data_lines(data: bytes) -> int:
    """Non-blank lines of ``data``: the lines a reader must account for."""
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    return sum(1 for line in text.split("\n") if line.strip())


@st.composite
def json_file(draw, keys: dict[str, str], ms: bool):
    """Lines of a review JSON-lines file: good reviews among bad lines; the bytes, the expected
    (user, item, seconds) of the good ones."""
    lines, kept = [], []
    for good in draw(st.lists(st.booleans(), min_size=1, max_size=12)):
        if good:
            record, expect = draw(good_review(keys, ms))
            lines.append(json.dumps(record).encode())
            kept.append(expect)
        else:
            lines.append(draw(bad_review(keys)))
    data = _file_bytes(lines, crlf=draw(st.booleans()), bom=draw(st.booleans()))
    return data, kept


def _write(folder: Path, name: str, data: bytes, gz: bool, cut: bool = False) -> Path:
    """``data`` in ``folder/name`` (gzipped: ``name.gz``; ``cut``: the gzip file's first half)."""
    path = folder / (name + (".gz" if gz else ""))
    if gz:
        data = gzip.compress(data, compresslevel=1)
        data = data[: len(data) // 2] if cut else data
    path.write_bytes(data)
    return path


def _check_reader(
    source: str, paths: list[Path], lines: int | None, kept: list, columns=None, cut=False
) -> None:
    """Kept + dropped == the input lines (``lines``, the non-blank ones; None: as the reader
    counts them), every good row kept, or a DataError (always, for a ``cut`` gzip file)."""
    reader = READERS[source](PrepareConfig(source=source, columns=columns))
    reader.window = WINDOW
    try:
        raw = reader.read(paths, max_bad_fraction=1.0)
    except DataError as err:
        assert not cut or "truncated gzip file" in str(err)
        return
    assert not cut, "a truncated gzip file was read without an error"
    dropped = sum(raw.dropped.values())
    assert raw.frame.height + dropped == raw.input_rows, raw.dropped
    assert lines is None or raw.input_rows == lines
    rows = set(raw.frame.select("user_id", "item_id", "timestamp").iter_rows())
    assert lines is None or set(kept) <= rows


class Tried:
    """Counts the inputs a hypothesis test ran on (printed; ``pytest -s`` shows it)."""

    def __init__(self, name: str, examples: int) -> None:
        self.name, self.examples, self.count = name, examples, 0

    def __repr__(self) -> str:
        return f"Tried({self.count})"

    def report(self) -> None:
        print(f"{self.name}: {self.count} generated inputs")
        assert self.count >= self.examples


REVIEW_JSON = {
    "amazon2014": ("reviews_Beauty_5.json", AMAZON2014_REVIEW_KEYS, False),
    "amazon2018": ("Gift_Cards_5.json", AMAZON2014_REVIEW_KEYS, False),
    "amazon2023": ("All_Beauty.jsonl", AMAZON2023_REVIEW_KEYS, True),
}


@pytest.mark.parametrize("source", list(REVIEW_JSON))
def test_json_review_readers_account_for_every_line(tmp_path, source):
    name, keys, ms = REVIEW_JSON[source]

    @fuzz(100)
    @given(json_file(keys, ms), st.sampled_from(["plain", "gz", "cut gz"]))
    @example(file=(b"   \n", []), kind="plain")  # polars decodes spaces to no row
    @example(file=(b"{}\n\x1f\x00\n", []), kind="plain")  # polars' scan cuts at \x1f
    def reviews(tried, file, kind):
        data, kept = file
        path = _write(tmp_path, name, data, kind != "plain", kind == "cut gz")
        _check_reader(source, [path], _data_lines(data), kept, cut=kind == "cut gz")
        tried.count += 1

    tried = Tried(f"reviews {source}", 100)
    reviews(tried)
    tried.report()


#: Cells of a table: numbers as text, dates, milliseconds, empty, NUL, BOM, quotes, newlines.
cell = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\x00", "\ufeffU1", '"', "a,b", "a\nb", "a\r\nb", "1e400", "NaN"]),
    st.integers(-(2**70), 2**70).map(str),
    deep,
    huge,
)


@st.composite
def table_file(draw, header: list[str], ms: bool, sep: str = ","):
    """A csv table (written by ``csv``: every record one row) of good rows among rows of
    malformed cells, CRLF or LF, maybe a BOM, maybe raw lines of random bytes among them; the
    bytes, the number of rows (None with raw lines) and the expected good rows."""
    rows, kept = [], []
    for good in draw(st.lists(st.booleans(), min_size=1, max_size=12)):
        user, item, ts = draw(ids), draw(ids), draw(seconds)
        ms_row = ms or draw(st.booleans())
        row = [user, item, str(ts * 1000 if ms_row else ts), draw(st.sampled_from(["5", "4.0"]))]
        if good:
            kept.append((user, item, ts))
        else:
            row[draw(st.integers(0, 3))] = draw(cell)
        rows.append(row)
    out = io.StringIO()
    newline = "\r\n" if draw(st.booleans()) else "\n"
    writer = csv.writer(out, delimiter=sep, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    bom = "\ufeff" if draw(st.booleans()) else ""
    lines = (bom + out.getvalue()).encode("utf-8", "surrogatepass").split(newline.encode())
    garbage = draw(st.lists(st.tuples(st.integers(1, len(lines)), random_bytes), max_size=2))
    for at, line in sorted(garbage, reverse=True):
        lines.insert(at, line)
    return newline.encode().join(lines), None if garbage else len(rows), kept


def test_tabular_reader_accounts_for_every_row(tmp_path):
    columns = {"user_id": "user", "item_id": "item", "timestamp": "time", "rating": "stars"}

    @fuzz(200)
    @given(st.sampled_from([",", "\t"]), st.sampled_from(["plain", "gz", "cut gz"]), st.data())
    def table(tried, sep, kind, data):
        data, lines, kept = data.draw(table_file(list(columns.values()), False, sep))
        name = "events.csv" if sep == "," else "events.tsv"
        path = _write(tmp_path, name, data, kind != "plain", kind == "cut gz")
        _check_reader("tabular", [path], lines, kept, columns, cut=kind == "cut gz")
        tried.count += 1

    tried = Tried("tabular", 200)
    table(tried)
    tried.report()


def test_2023_benchmark_csv_reader_accounts_for_every_row(tmp_path):
    header = ["user_id", "parent_asin", "timestamp", "rating"]

    @fuzz(200)
    @given(table_file(header, True), table_file(header, True), st.booleans())
    def benchmark(tried, train, test, gz):
        paths = [
            _write(tmp_path, f"All_Beauty.{split}.csv", data, gz)
            for split, (data, _, _) in (("train", train), ("test", test))
        ]
        rows = None if None in (train[1], test[1]) else train[1] + test[1]
        _check_reader("amazon2023", paths, rows, train[2] + test[2])
        tried.count += 1

    tried = Tried("2023 benchmark csv", 200)
    benchmark(tried)
    tried.report()


@st.composite
def meta_file(draw, release: str):
    """Lines of a metadata file: records (JSON; 2014: Python literals too) among bad lines."""
    keys = META_KEYS[release]
    lines = []
    for _ in range(draw(st.integers(1, 10))):
        record = {keys["item_id"][0]: draw(ids), keys["title"][0]: draw(st.text(max_size=10))}
        key = draw(st.sampled_from([k[0].split(".")[0] for k in keys.values()]))
        record[key] = draw(st.one_of(wrong, deep, huge, st.lists(st.text(max_size=4))))
        line = draw(
            st.one_of(
                st.just(json.dumps(record)),
                st.just(repr(record)),  # the 2014 files' Python literals
                st.just(repr(record).replace("'", "", 1)),
                st.just(f"{{'{keys['item_id'][0]}': 'A', 'x': {{[1]: 2}}}}"),  # unhashable key
                bad_review(AMAZON2014_REVIEW_KEYS),
            )
        )
        lines.append(line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass"))
    return _file_bytes(lines, crlf=draw(st.booleans()), bom=draw(st.booleans()))


@pytest.mark.parametrize("release", ["amazon2014", "amazon2018", "amazon2023"])
def test_metadata_readers_count_every_line(tmp_path, release):

    @fuzz(200)
    @given(meta_file(release), st.booleans())
    @example(data=b"\t\n", gz=False)
    @example(data=b'{"asin": null, "title": ""}\n\x1f\x00\n', gz=False)
    def meta(tried, data, gz):
        path = _write(tmp_path, "meta.json", data, gz)
        bad = BadLines(str(path))
        try:
            rows = read_meta_lines(path, META_KEYS[release], bad)
        except DataError:
            tried.count += 1
            return
        assert bad.total == _data_lines(data)
        assert rows.height + bad.num_bad <= bad.total
        assert rows["item_id"].null_count() == 0 and isinstance(rows, pl.DataFrame)
        tried.count += 1

    tried = Tried(f"metadata {release}", 200)
    meta(tried)
    tried.report()
