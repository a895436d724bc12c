"""Tests for mmrec.calendar: holiday rules, the per-day table, event windows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from mmrec.calendar import (
    DAY_BUCKET_EDGES,
    NUM_DAY_BUCKETS,
    bucket_days,
    build_calendar_table,
    day_index,
    easter,
    event_dates,
    in_event_window,
    to_unix,
)


@pytest.mark.parametrize(
    "name, year, expected",
    [
        ("easter", 2014, "2014-04-20"),
        ("easter", 2013, "2013-03-31"),
        ("easter", 2000, "2000-04-23"),
        ("easter", 2024, "2024-03-31"),
        ("easter", 2025, "2025-04-20"),
        ("thanksgiving", 2013, "2013-11-28"),
        ("thanksgiving", 2014, "2014-11-27"),
        ("black_friday", 2013, "2013-11-29"),
        ("cyber_monday", 2013, "2013-12-02"),
        ("mothers_day", 2014, "2014-05-11"),
        ("mothers_day", 2013, "2013-05-12"),
        ("fathers_day", 2014, "2014-06-15"),
        ("fathers_day", 2013, "2013-06-16"),
        ("christmas", 2013, "2013-12-25"),
        ("new_year", 2014, "2014-01-01"),
        ("valentines_day", 2014, "2014-02-14"),
        ("halloween", 2013, "2013-10-31"),
        ("prime_day", 2015, "2015-07-15"),
        ("prime_day", 2020, "2020-10-13"),
        ("12-01", 2013, "2013-12-01"),
    ],
)
def test_event_rules_give_known_dates(name, year, expected):
    assert event_dates(name, year, year)[0] == dt.date.fromisoformat(expected)


def test_easter_is_always_a_sunday_in_march_or_april():
    for year in range(1900, 2100):
        d = easter(year)
        assert d.weekday() == 6 and d.month in (3, 4), year


def test_prime_day_absent_outside_known_years_and_multi_day_events():
    assert event_dates("prime_day", 2005, 2014) == []
    assert len(event_dates("prime_day", 2025, 2025)) == 4


def test_unknown_event_error_says_what_to_do():
    with pytest.raises(ValueError, match="unknown calendar event 'xmas'.*christmas"):
        event_dates("xmas", 2013, 2013)


def test_table_calendar_columns_match_python_datetime():
    table = build_calendar_table(["christmas"], "2012-12-20", "2016-01-10")
    days = np.arange(np.datetime64("2012-12-20"), np.datetime64("2016-01-10") + 1)
    assert table.num_days == days.size
    for i, d64 in enumerate(days):
        d = d64.astype(dt.date)
        assert table.month[i] == d.month - 1
        assert table.day_of_week[i] == d.weekday()
        assert table.day_of_month[i] == d.day - 1
        assert table.week_of_year[i] == d.isocalendar()[1] - 1
        assert table.year[i] == d.year


def test_days_until_and_since_events():
    table = build_calendar_table(["christmas", "black_friday", "prime_day"])
    row = table.rows(np.array([day_index("2013-12-20") * 86400 + 3600]))[0]
    assert table.days_until[row].tolist()[:2] == [5, 343]  # to 2013-12-25, 2014-11-28
    assert table.days_since[row].tolist()[:2] == [360, 21]  # since 2012-12-25, 2013-11-29
    assert table.days_since[row, 2] > 10_000  # no Prime Day before 2015: "unknown"
    on_day = table.rows(np.array([day_index("2013-12-25") * 86400]))[0]
    assert table.days_until[on_day, 0] == 0 and table.days_since[on_day, 0] == 0


def test_codes_are_offset_into_one_vocabulary():
    table = build_calendar_table(["christmas", "easter"], "2013-01-01", "2014-12-31")
    codes = table.codes()
    assert codes.shape == (table.num_days, 4 + 2 * 2)
    assert codes.min() >= 0 and codes.max() < table.vocab_size()
    # Columns never share codes.
    ranges = [(codes[:, j].min(), codes[:, j].max()) for j in range(codes.shape[1])]
    for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False):
        assert hi < lo


def test_bucket_days():
    assert bucket_days(np.array([0, 1, 7, 8, 10, 11, 180, 181, 10**6])).tolist() == [
        0,
        1,
        7,
        8,
        8,
        9,
        NUM_DAY_BUCKETS - 2,
        NUM_DAY_BUCKETS - 1,
        NUM_DAY_BUCKETS - 1,
    ]
    assert len(DAY_BUCKET_EDGES) == NUM_DAY_BUCKETS


def test_in_event_window_vectorised():
    ts = np.array(
        [day_index(d) * 86400 for d in ["2013-12-20", "2013-07-20", "2014-02-10", "2013-12-26"]]
    )
    assert in_event_window(ts, days_before=14).tolist() == [True, False, True, False]
    assert in_event_window(ts, ["christmas"], days_before=14, days_after=1).tolist() == [
        True,
        False,
        False,
        True,
    ]


def test_to_unix():
    assert to_unix("2013-12-20") == 1387497600
    assert to_unix("2013-12-20T15:30:00", "day") == 1387497600
    assert to_unix("2013-12-20T15:30:00+01:00") == 1387497600 + 14 * 3600 + 1800
    with pytest.raises(ValueError, match="not an ISO date"):
        to_unix("20 Dec")
    assert to_unix(None) is None
    assert to_unix(1387497600.7) == 1387497600
    assert to_unix(dt.date(2013, 12, 20)) == 1387497600
