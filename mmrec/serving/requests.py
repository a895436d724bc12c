"""`POST /recommend` bodies checked and turned into :class:`~mmrec.serving.bundle.Query`s; every
problem is a :class:`RequestError` with an HTTP status and one line saying what is wrong."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from mmrec.calendar import DAY, now_unix, to_unix
from mmrec.data.batch import EVENT_FIELDS
from mmrec.serving.bundle import Query, ServedModel

FIELDS = {"user", "history", "at", "k"}
EVENT_KEYS = {"asin", "time", "rating"}


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())


@dataclass(frozen=True)
class Limits:
    """What a request may ask for.

    Attributes:
        max_history: Most events in a request's ``history`` (413 above).
        max_days_after: How far after the data's last event ``at`` may lie, in days: the event
            log ends there, so later every recent count would read 0.
    """

    max_history: int = 1000
    max_days_after: float = 7.0


def iso(ts: int, granularity: str | None) -> str:
    """A query time as the answer states it: ``YYYY-MM-DD`` for day-granular models."""
    when = datetime.fromtimestamp(ts, timezone.utc)
    return when.strftime("%Y-%m-%d") if granularity == "day" else when.isoformat()


def _time(value: Any, what: str, granularity: str | None) -> int:
    if not isinstance(value, str):
        raise RequestError(422, f"{what} must be a date string YYYY-MM-DD, got {_show(value)}")
    try:
        return to_unix(value, granularity, name=what)
    except (ValueError, OverflowError) as err:
        raise RequestError(422, str(err)) from None


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _window(model: ServedModel, limits: Limits) -> tuple[int, int]:
    """The query times served: from the data's first day to ``max_days_after`` past its end."""
    first, last = model.time_range
    return first - first % DAY, last + int(limits.max_days_after * DAY)


def parse(body: bytes, model: ServedModel, limits: Limits) -> Query:
    """The query of a ``POST /recommend`` body, checked against the model.

    Body: ``{"user": id, "history": [{"asin": id, "time": "YYYY-MM-DD", "rating": x}, ...],
    "at": "YYYY-MM-DD", "k": 10}``: ``user`` and/or ``history``; ``at`` (default: now, or the
    day after the data's last event when now lies outside the data's range), ``k``, ``time``
    (default: ``at``) and ``rating`` optional. A known user's events up to ``at`` come first,
    then the request's; the whole history is put in time order (stable).

    Raises:
        RequestError: 400 malformed JSON or not an object; 404 an unknown user without
            history; 413 too long a history; 422 any other bad field (one line naming it).
    """
    try:
        req = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise RequestError(400, f"malformed JSON: {err}") from None
    if not isinstance(req, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(req).__name__}")
    unknown = sorted(set(req) - FIELDS)
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}; fields: at, history, k, user")
    lo, hi = _window(model, limits)
    span = f"{iso(lo, 'day')} .. {iso(hi, 'day')}"
    if req.get("at") is None:
        now = to_unix(now_unix(), model.granularity)
        at = now if lo <= now <= hi else to_unix(model.time_range[1] + DAY, model.granularity)
    else:
        at = _time(req["at"], "at", model.granularity)
        if not lo <= at <= hi:
            raise RequestError(422, f"at {req['at']} is outside the data's time range {span}")
    k = req.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool):
        raise RequestError(422, f"k must be an integer, got {_show(k)}")
    if not 1 <= k <= model.num_items:
        raise RequestError(422, f"k must be within 1..{model.num_items} (the catalogue), got {k}")
    user = req.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError(422, f"user must be a string, got {_show(user)}")
    history = req.get("history")
    if history is None:
        history = []
    if not isinstance(history, list):
        raise RequestError(422, f"history must be a list of events, got {_show(history)}")
    if len(history) > limits.max_history:
        raise RequestError(
            413, f"history has {len(history)} events; at most {limits.max_history} are accepted"
        )
    user_idx = model.users.get(user, -1) if user is not None else -1
    if not history and user_idx < 0:
        if user is None:
            raise RequestError(422, "give a user and/or a history")
        raise RequestError(404, f"unknown user {user!r} and no history")
    own = _events(history, at, lo, model)
    stored = model.user_events(user_idx, at) if user_idx >= 0 else None
    if stored is not None and len(stored["item_ids"]):
        own = {key: np.concatenate([stored[key], own[key]]) for key in own}
    if not len(own["item_ids"]):
        if stored is not None and not history:
            raise RequestError(422, f"user {user!r} has no event up to at {iso(at, 'day')}")
        skipped = [str(e["asin"]) for e in history]
        shown = ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        raise RequestError(422, f"no history item is in the catalogue (unknown ASINs: {shown})")
    order = np.argsort(own["timestamps"], kind="stable")
    events = {key: values[order] for key, values in own.items()}
    skipped = [e["asin"] for e in history if e["asin"] not in model.index]
    return Query(events, at, k, user_idx, skipped)


def _events(history: list, at: int, first: int, model: ServedModel) -> dict[str, np.ndarray]:
    """The request's known events as per-event fields (unknown ASINs left out)."""
    items, times, ratings = [], [], []
    for i, event in enumerate(history):
        if not isinstance(event, dict):
            raise RequestError(422, f"history[{i}] must be an object with asin and time")
        extra = sorted(set(event) - EVENT_KEYS)
        if extra:
            raise RequestError(422, f"history[{i}] has unknown field {extra[0]!r}")
        asin = event.get("asin")
        if not isinstance(asin, str):
            raise RequestError(422, f"history[{i}].asin must be a string, got {_show(asin)}")
        when = at
        if event.get("time") is not None:
            when = _time(event["time"], f"history[{i}].time", model.granularity)
            if not first <= when <= at:
                raise RequestError(
                    422,
                    f"history[{i}].time {event['time']} is outside {iso(first, 'day')} .. "
                    f"at ({iso(at, 'day')})",
                )
        rating = event.get("rating")
        bad = isinstance(rating, bool) or not isinstance(rating, (int, float, type(None)))
        if bad or (rating is not None and not math.isfinite(rating)):
            raise RequestError(422, f"history[{i}].rating must be a number, got {_show(rating)}")
        idx = model.index.get(asin)
        if idx is not None:
            items.append(idx)
            times.append(when)
            ratings.append(math.nan if rating is None else float(rating))
    given = {"item_ids": items, "timestamps": times, "ratings": ratings}
    return {
        f.key: np.asarray(given.get(f.key, [f.pad] * len(items)), dtype=f.dtype)
        for f in EVENT_FIELDS
    }  # fields a request does not give (event_rows: not an event of the dataset) are padding
