"""Tests of the trend report tables (per month with empty months, per weekday, top items)."""

from __future__ import annotations

import polars as pl

from mmrec.ingest.report import trend_tables, write_trend_report

DAY = 86400
JAN1_2020 = 1577836800  # a Wednesday


def _tables():
    inter = pl.DataFrame(
        {
            "item_idx": [1, 2, 1, 2, 2],
            "timestamp": [
                JAN1_2020,
                JAN1_2020 + DAY,
                JAN1_2020 + 2 * DAY,
                JAN1_2020 + 70 * DAY,
                JAN1_2020 + 71 * DAY,
            ],
        }
    )
    items = pl.DataFrame({"item_idx": [1, 2], "item_id": ["A", "B"], "title": ["Soap", None]})
    return inter, items


def test_trend_tables_values():
    tables = trend_tables(*_tables(), top_k=1)
    assert tables["per_month"].rows() == [("2020-01", 3), ("2020-02", 0), ("2020-03", 2)]
    weekday = dict(tables["per_weekday"].rows())
    assert list(weekday) == ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    # Jan 1-3 2020: Wed, Thu, Fri; Mar 11-12 2020: Wed, Thu
    assert weekday == {"Mon": 0, "Tue": 0, "Wed": 2, "Thu": 2, "Fri": 1, "Sat": 0, "Sun": 0}
    assert tables["top_items"].select("month", "rank", "item_id", "interactions").rows() == [
        ("2020-01", 1, "A", 2),
        ("2020-03", 1, "B", 2),
    ]


def test_write_trend_report(tmp_path):
    paths = write_trend_report(*_tables(), tmp_path / "report")
    assert [p.name for p in paths] == [
        "trends.png",
        "top_items_per_month.csv",
        "top_items_per_month.md",
    ]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert "| 2020-01 | 1 | 1 | A | Soap | 2 |" in paths[2].read_text()
