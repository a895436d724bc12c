"""Time vocabulary: the DAY constant, the one date parser, holiday and shopping-event dates by
rule, and a vectorised per-day calendar lookup table."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

DAY = 86_400
"""Seconds per day; day-granular timestamps are multiples of it (UTC midnight)."""


def to_unix(
    value: dt.datetime | dt.date | str | int | float | np.integer | None,
    granularity: str | None = None,
    *,
    name: str = "time",
) -> int | None:
    """Unix seconds (UTC) of a datetime, a date, an ISO date/datetime string or a number.

    Naive datetimes and dates are taken as UTC; numbers are unix seconds already; None stays
    None. With ``granularity="day"`` the result is floored to midnight, as day-granular
    timestamps are.

    Raises:
        ValueError: naming ``name`` when a string is not an ISO date or datetime.
    """
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        ts = int(value)
    elif isinstance(value, float):
        ts = int(value // 1)
    else:
        if isinstance(value, str):
            try:
                value = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(
                    f"{name} {value!r} is not an ISO date or datetime "
                    "(e.g. 2014-12-20 or 2014-12-20T18:30)"
                ) from None
        if not isinstance(value, dt.datetime):  # a date
            value = dt.datetime(value.year, value.month, value.day)
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        ts = int(value.timestamp())
    return ts - ts % DAY if granularity == "day" else ts


def now_unix() -> int:
    """The current time in unix seconds."""
    return int(dt.datetime.now(dt.timezone.utc).timestamp())


# Amazon Prime Day (US), every day of the event. No rule exists: it is announced each year.
PRIME_DAY: dict[int, tuple[str, ...]] = {
    2015: ("2015-07-15",),
    2016: ("2016-07-12",),
    2017: ("2017-07-10", "2017-07-11"),
    2018: ("2018-07-16", "2018-07-17"),
    2019: ("2019-07-15", "2019-07-16"),
    2020: ("2020-10-13", "2020-10-14"),
    2021: ("2021-06-21", "2021-06-22"),
    2022: ("2022-07-12", "2022-07-13"),
    2023: ("2023-07-11", "2023-07-12"),
    2024: ("2024-07-16", "2024-07-17"),
    2025: ("2025-07-08", "2025-07-09", "2025-07-10", "2025-07-11"),
}
# Amazon's autumn Prime event ("Prime Early Access Sale" / "Prime Big Deal Days").
PRIME_BIG_DEAL_DAYS: dict[int, tuple[str, ...]] = {
    2022: ("2022-10-11", "2022-10-12"),
    2023: ("2023-10-10", "2023-10-11"),
    2024: ("2024-10-08", "2024-10-09"),
    2025: ("2025-10-07", "2025-10-08"),
}


def easter(year: int) -> dt.date:
    """Western (Gregorian) Easter Sunday by the anonymous Gregorian computus."""
    a = year % 19
    b, c = divmod(year, 100)
    d, e = divmod(b, 4)
    f = (b + 8) // 25
    g = (b - f + 1) // 3
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    el = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * el) // 451
    month, day = divmod(h + el - 7 * m + 114, 31)
    return dt.date(year, month, day + 1)


def nth_weekday(year: int, month: int, weekday: int, n: int) -> dt.date:
    """The ``n``-th (1-based) ``weekday`` (Monday = 0) of a month."""
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def thanksgiving(year: int) -> dt.date:
    """US Thanksgiving: fourth Thursday of November."""
    return nth_weekday(year, 11, 3, 4)


def _fixed(month: int, day: int) -> Callable[[int], list[dt.date]]:
    return lambda year: [dt.date(year, month, day)]


def _table(table: dict[int, tuple[str, ...]]) -> Callable[[int], list[dt.date]]:
    return lambda year: [dt.date.fromisoformat(s) for s in table.get(year, ())]


EventRule = Callable[[int], list[dt.date]]
"""A rule maps a year to the event's days in that year (empty where unknown)."""

_RULES: dict[str, EventRule] = {
    "new_year": _fixed(1, 1),
    "valentines_day": _fixed(2, 14),
    "easter": lambda y: [easter(y)],
    "mothers_day": lambda y: [nth_weekday(y, 5, 6, 2)],  # US: 2nd Sunday of May
    "fathers_day": lambda y: [nth_weekday(y, 6, 6, 3)],  # US: 3rd Sunday of June
    "prime_day": _table(PRIME_DAY),
    "independence_day": _fixed(7, 4),
    "halloween": _fixed(10, 31),
    "prime_big_deal_days": _table(PRIME_BIG_DEAL_DAYS),
    "singles_day": _fixed(11, 11),
    "thanksgiving": lambda y: [thanksgiving(y)],
    "black_friday": lambda y: [thanksgiving(y) + dt.timedelta(days=1)],
    "cyber_monday": lambda y: [thanksgiving(y) + dt.timedelta(days=4)],
    "christmas": _fixed(12, 25),
}
EVENT_RULES: Mapping[str, EventRule] = MappingProxyType(_RULES)
"""Known events by name (read-only). Other events are configured where they are used, as
data (``custom_events``: name -> dates), so a checkpoint that names them rebuilds anywhere."""

DEFAULT_EVENTS: tuple[str, ...] = (
    "christmas",
    "new_year",
    "valentines_day",
    "easter",
    "mothers_day",
    "fathers_day",
    "halloween",
    "thanksgiving",
    "black_friday",
    "cyber_monday",
    "prime_day",
)
"""The events the time encoders use unless configured otherwise."""

GIFT_EVENTS: tuple[str, ...] = (
    "christmas",
    "valentines_day",
    "mothers_day",
    "fathers_day",
    "black_friday",
    "cyber_monday",
)
"""Gift-buying events used for the "holiday window" evaluation slice."""

# Bucket lower edges for "days until / since" an event; the last bucket also holds "unknown".
DAY_BUCKET_EDGES: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 15, 22, 31, 46, 61, 91, 181)
NUM_DAY_BUCKETS = len(DAY_BUCKET_EDGES)
_FAR = 1_000_000  # distance used where an event has no known occurrence before/after a day
_MMDD = re.compile(r"^(\d\d)-(\d\d)$")


def _annual(text: str) -> EventRule:
    match = _MMDD.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a date written 'MM-DD' or 'YYYY-MM-DD'")
    month, day = int(match.group(1)), int(match.group(2))
    dt.date(2000, month, day)  # validates (2000 is a leap year, so 02-29 is accepted)
    return lambda y: [dt.date(y, month, day)] if (month, day) != (2, 29) or y % 4 == 0 else []


def _custom_rule(name: str, dates: Sequence[str]) -> EventRule:
    """Rule of a configured event: ``"MM-DD"`` entries recur every year, ISO dates once."""
    annual, once = [], []
    for text in dates:
        try:
            if len(text) > 5:
                once.append(dt.date.fromisoformat(text))
            else:
                annual.append(_annual(text))
        except ValueError as err:
            raise ValueError(f"custom event {name!r}: {err}") from None
    return lambda y: [d for r in annual for d in r(y)] + [d for d in once if d.year == y]


def event_rule(name: str, custom: Mapping[str, Sequence[str]] | None = None) -> EventRule:
    """The rule of an event: a configured ``custom`` event (name -> ``"MM-DD"`` or ISO
    dates), a known name (:data:`EVENT_RULES`), or a fixed annual date written ``"MM-DD"``."""
    if custom and name in custom:
        return _custom_rule(name, custom[name])
    if name in EVENT_RULES:
        return EVENT_RULES[name]
    if _MMDD.match(name):
        return _annual(name)
    raise ValueError(
        f"unknown calendar event {name!r}: use one of {sorted(EVENT_RULES)}, a fixed date "
        "written 'MM-DD', or define it in custom_events (name: [dates])"
    )


def event_dates(
    name: str, first_year: int, last_year: int, custom: Mapping[str, Sequence[str]] | None = None
) -> list[dt.date]:
    """All days of event ``name`` in ``first_year..last_year`` (inclusive), sorted."""
    rule = event_rule(name, custom)
    return sorted(d for y in range(first_year, last_year + 1) for d in rule(y))


def day_index(date: dt.date | str | np.datetime64) -> int:
    """Days since 1970-01-01 (what ``timestamp // 86400`` gives for unix seconds, UTC)."""
    return int(np.datetime64(date, "D").astype(np.int64))


def bucket_days(days: np.ndarray) -> np.ndarray:
    """Bucket non-negative day distances by :data:`DAY_BUCKET_EDGES` -> ``0..NUM_DAY_BUCKETS-1``."""
    return np.searchsorted(np.asarray(DAY_BUCKET_EDGES), days, side="right") - 1


def _distances(days: np.ndarray, event_days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Days until the next and since the last occurrence (0 on the day itself), ``_FAR`` if none."""
    if event_days.size == 0:
        far = np.full(days.shape, _FAR, dtype=np.int64)
        return far, far.copy()
    nxt = np.searchsorted(event_days, days, side="left")  # first event day >= day
    prv = np.searchsorted(event_days, days, side="right") - 1  # last event day <= day
    has_next, has_prev = nxt < event_days.size, prv >= 0
    until = np.where(has_next, event_days[np.minimum(nxt, event_days.size - 1)] - days, _FAR)
    since = np.where(has_prev, days - event_days[np.maximum(prv, 0)], _FAR)
    return until.astype(np.int64), since.astype(np.int64)


@dataclass(frozen=True)
class CalendarTable:
    """Per-day calendar features for every day of ``[first_day, first_day + num_days)``.

    Built once (numpy, vectorised); looking up any number of timestamps is one gather.

    Attributes:
        first_day: Day index (days since 1970-01-01) of row 0.
        events: Event names, the order of the columns of ``days_until``/``days_since``.
        month: ``[N]`` 0..11.
        day_of_week: ``[N]`` 0..6, Monday = 0.
        day_of_month: ``[N]`` 0..30.
        week_of_year: ``[N]`` ISO week - 1, 0..52.
        year: ``[N]`` calendar year.
        days_until: ``[N, E]`` days to the next occurrence of each event (0 on it), capped at
            ``_FAR`` where no later occurrence is known (e.g. Prime Day before 2015).
        days_since: ``[N, E]`` days since the last occurrence of each event (0 on it).
    """

    first_day: int
    events: tuple[str, ...]
    month: np.ndarray
    day_of_week: np.ndarray
    day_of_month: np.ndarray
    week_of_year: np.ndarray
    year: np.ndarray
    days_until: np.ndarray
    days_since: np.ndarray

    @property
    def num_days(self) -> int:
        return int(self.month.shape[0])

    def rows(self, timestamps: np.ndarray) -> np.ndarray:
        """Row of each unix-seconds timestamp (clipped to the table's range)."""
        days = np.floor_divide(np.asarray(timestamps, dtype=np.int64), DAY)
        return np.clip(days - self.first_day, 0, self.num_days - 1)

    def codes(self) -> np.ndarray:
        """``[N, 4 + 2E]`` int64 embedding codes, offset so one table holds every feature.

        Columns: month, day of week, day of month, week of year, then for each event its
        "until" bucket and its "since" bucket. Total vocabulary: :meth:`vocab_size`.
        """
        e = len(self.events)
        offsets = np.cumsum([0, 12, 7, 31, 53] + [NUM_DAY_BUCKETS] * (2 * e - 1))
        cols = [self.month, self.day_of_week, self.day_of_month, self.week_of_year]
        for j in range(e):
            cols += [bucket_days(self.days_until[:, j]), bucket_days(self.days_since[:, j])]
        return np.stack(cols, axis=1).astype(np.int64) + offsets[None, :]

    def vocab_size(self) -> int:
        return 12 + 7 + 31 + 53 + 2 * len(self.events) * NUM_DAY_BUCKETS


def build_calendar_table(
    events: Sequence[str] = DEFAULT_EVENTS,
    start: str = "1995-01-01",
    end: str = "2035-12-31",
    custom: Mapping[str, Sequence[str]] | None = None,
) -> CalendarTable:
    """Compute the calendar features of every day from ``start`` to ``end`` (inclusive, UTC).

    Args:
        events: Event names (see :data:`EVENT_RULES`), names defined in ``custom``, or fixed
            dates ``"MM-DD"``.
        start: First day of the table (ISO date).
        end: Last day of the table (ISO date).
        custom: Configured events: name -> dates (``"MM-DD"`` every year, or ISO dates).
    """
    days = np.arange(np.datetime64(start, "D"), np.datetime64(end, "D") + 1)
    if days.size == 0:
        raise ValueError(f"empty calendar range {start}..{end}: start must not be after end")
    d = days.astype(np.int64)
    months = days.astype("datetime64[M]")
    year = days.astype("datetime64[Y]").astype(np.int64) + 1970
    dow = (d + 3) % 7  # 1970-01-01 was a Thursday
    # ISO week: the week's Thursday decides the ISO year.
    thursday = d - dow + 3
    iso_year_start = (
        thursday.astype("datetime64[D]").astype("datetime64[Y]").astype("datetime64[D]")
    )
    week = (thursday - iso_year_start.astype(np.int64)) // 7  # 0-based
    first_year, last_year = int(year[0]) - 1, int(year[-1]) + 1
    until_cols, since_cols = [], []
    for name in events:
        dates = event_dates(name, first_year, last_year, custom)
        ev = np.array([day_index(x) for x in dates], np.int64)
        until, since = _distances(d, ev)
        until_cols.append(until)
        since_cols.append(since)
    empty = np.zeros((d.size, 0), np.int64)
    return CalendarTable(
        first_day=int(d[0]),
        events=tuple(events),
        month=(months.astype(np.int64) % 12),
        day_of_week=dow,
        day_of_month=(days - months.astype("datetime64[D]")).astype(np.int64),
        week_of_year=week,
        year=year,
        days_until=np.stack(until_cols, axis=1) if events else empty,
        days_since=np.stack(since_cols, axis=1) if events else empty.copy(),
    )


def in_event_window(
    timestamps: np.ndarray,
    events: Sequence[str] = GIFT_EVENTS,
    days_before: int = 14,
    days_after: int = 0,
    table: CalendarTable | None = None,
) -> np.ndarray:
    """Whether each timestamp lies within ``days_before`` days before (or ``days_after`` after)
    any of ``events`` — the "holiday window" slice. Vectorised: ``[...]`` int -> ``[...]`` bool.
    """
    table = table or build_calendar_table(events)
    cols = [table.events.index(e) for e in events]
    rows = table.rows(timestamps)
    until = table.days_until[rows][..., cols]
    since = table.days_since[rows][..., cols]
    return ((until <= days_before) | (since <= days_after)).any(axis=-1)
