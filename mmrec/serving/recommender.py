"""Recommender: a trained model and its dataset folder -> time-aware top-K for a known user or a
raw history, with item dynamics read from the dataset's event log or a newer events file."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import polars as pl
import torch

from mmrec.calendar import DAY, now_unix, to_unix
from mmrec.data.batch import history_batch, last_items
from mmrec.data.eventlog import EventLog


@dataclass(frozen=True)
class Recommendation:
    """One recommended item: raw id (ASIN), title (None if unknown) and model score."""

    item_id: str
    title: str | None
    score: float


@dataclass(frozen=True)
class EventsRead:
    """What :meth:`Recommender.use_events` read from an events file.

    Attributes:
        path: The file.
        events: Events of known items now in the log (of the file).
        items: Distinct known items among them.
        unknown_events: Events of item ids the dataset does not know (skipped).
        unknown_ids: Those ids, distinct, in the file's order.
        null_rows: Rows without an item id or a timestamp (skipped).
        first, last: Unix seconds of the earliest and latest known event (None: no event).
        appended: Whether the events were added to the dataset's log (else they replace it).
    """

    path: str
    events: int
    items: int
    unknown_events: int
    unknown_ids: list[str]
    null_rows: int
    first: int | None
    last: int | None
    appended: bool


class Recommender:
    """Top-K recommendations from a trained :class:`~mmrec.module.MMRecModule`.

    The query time (``at``) enters the model through the ``query_time`` of the batch, so
    with a time-aware model the same history gets different recommendations in December and
    in July. Items already in the history are not recommended. A model with item dynamics
    adds their score term as of ``at`` from the event log: the dataset's, or the events of a
    newer file (:meth:`use_events`), without retraining.

    Args:
        model: A trained model (its ``max_len`` and encoders are used as they are).
        data_dir: The dataset folder the model was trained on (``items.parquet``,
            ``users.parquet``, ``interactions.parquet``).
        device: Where to run the model.
    """

    def __init__(self, model, data_dir: str | Path, device: str | torch.device = "cpu") -> None:
        data_dir = Path(data_dir)
        if not (data_dir / "meta.json").is_file():
            raise FileNotFoundError(
                f"{data_dir} has no meta.json (missing, or an interrupted `mmrec prepare`): pass "
                "the prepared dataset folder the model was trained on (--data_dir DIR), or "
                "prepare it again"
            )
        self.meta = json.loads((data_dir / "meta.json").read_text())
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.data_dir = data_dir
        self.max_len = int(model.hparams.max_len)
        self.granularity = model.hparams.get("time_granularity")
        items = pl.read_parquet(
            data_dir / "items.parquet", columns=["item_idx", "item_id", "title"]
        )
        if items.height != model.num_items:
            raise ValueError(
                f"{data_dir} has {items.height} items but the model was trained on "
                f"{model.num_items}: wrong --data_dir for this checkpoint?"
            )
        items = items.sort("item_idx")
        self.item_ids: list[str] = ["", *items["item_id"].to_list()]
        self.titles: list[str | None] = [None, *items["title"].to_list()]
        self.index = {iid: i for i, iid in enumerate(self.item_ids) if i}
        self._users: dict[str, int] | None = None
        self._item_vecs: torch.Tensor | None = None
        self._events_span: tuple[int, int] | None = None
        if len(model.dynamics):  # the dataset's events, until use_events hands in others
            model.set_event_log(EventLog.from_folder(data_dir))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        data_dir: str | Path | None = None,
        device: str = "cpu",
        trusted_modules: list[str] | None = None,
    ) -> Recommender:
        """Rebuild the model from a Lightning checkpoint alone (its hyper-parameters hold the
        encoders), with its dataset folder (default: the one it was trained on).
        ``trusted_modules``: packages outside mmrec the checkpoint's components may come from
        (see ``MMRecModule``)."""
        from mmrec.module import MMRecModule

        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} not found")
        kw: dict = {"data_dir": str(data_dir)} if data_dir is not None else {}
        if trusted_modules:
            kw["trusted_modules"] = list(trusted_modules)
        model = MMRecModule.load_from_checkpoint(
            str(path), map_location="cpu", weights_only=True, **kw
        )
        data_dir = data_dir or model.hparams.get("data_dir")
        if not data_dir:
            raise ValueError(f"checkpoint {path} does not name its dataset folder: pass data_dir")
        return cls(model, data_dir, device)

    # ------------------------------------------------------------------ histories
    @property
    def users(self) -> dict[str, int]:
        """``user_id -> user_idx`` of the dataset."""
        if self._users is None:
            u = pl.read_parquet(self.data_dir / "users.parquet", columns=["user_idx", "user_id"])
            self._users = dict(zip(u["user_id"].to_list(), u["user_idx"].to_list(), strict=True))
        return self._users

    def user_history(self, user_id: str) -> tuple[list[int], list[int], list[float], list[int]]:
        """A known user's full history (every split) in time order: items, timestamps,
        ratings and event rows (1 + the row index in interactions.parquet)."""
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id!r}: not in {self.data_dir / 'users.parquet'}")
        rows = (
            pl.scan_parquet(self.data_dir / "interactions.parquet")
            .with_row_index("row", offset=1)
            .filter(pl.col("user_idx") == self.users[user_id])
            .select("item_idx", "timestamp", "rating", "row")
            .collect()
        )
        ratings = rows["rating"].cast(pl.Float32).fill_null(float("nan")).to_list()
        return (
            rows["item_idx"].to_list(),
            rows["timestamp"].to_list(),
            ratings,
            rows["row"].cast(pl.Int64).to_list(),
        )

    def time_range(self) -> tuple[int, int] | None:
        """First and last event time of the dataset (meta.json), widened by the events of
        :meth:`use_events`; None when unknown."""
        span = self.meta.get("time_range")
        span = (int(span[0]), int(span[1])) if span else None
        if self._events_span is None:
            return span
        if span is None:
            return self._events_span
        return min(span[0], self._events_span[0]), max(span[1], self._events_span[1])

    # ------------------------------------------------------------------ event log
    def use_events(self, path: str | Path, append: bool = False) -> EventsRead:
        """Read item dynamics from the events of a file from now on, without retraining.

        Args:
            path: A ``.parquet``, ``.csv`` or ``.tsv`` file with columns ``item_id`` (the
                dataset's raw ids, ASINs) and ``timestamp`` (unix seconds, a date or datetime
                column, or ISO strings; UTC). Day-granular models floor the times to days, as
                their training data was. Events of unknown items are skipped and counted. An
                optional ``user_id`` column (raw ids; new users allowed) says who made each
                event: item dynamics that read what followed what
                (:class:`~mmrec.encoders.dynamics.TransitionDynamics`) need it.
            append: Add the events to the dataset's log (events after it); False: they are
                the whole log (e.g. a newer export of every event).

        Returns:
            What was read (counts, unknown ids, time span).

        Raises:
            ValueError: A missing column, an unreadable timestamp, or an unknown file type.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"events file {path} not found")
        if path.suffix not in (".parquet", ".csv", ".tsv"):
            raise ValueError(f"events file {path}: expected .parquet, .csv or .tsv")
        try:
            if path.suffix == ".parquet":
                frame = pl.read_parquet(path)
            else:
                frame = pl.read_csv(path, separator="\t" if path.suffix == ".tsv" else ",")
        except (pl.exceptions.PolarsError, OSError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(f"events file {path} cannot be read: {reason}") from None
        missing = {"item_id", "timestamp"} - set(frame.columns)
        if missing:
            raise ValueError(
                f"events file {path} has no column {', '.join(sorted(missing))} (columns: "
                f"{', '.join(frame.columns)}); it needs item_id and timestamp"
            )
        total = frame.height
        with_users = "user_id" in frame.columns
        needs_users = [type(d).__name__ for d in self.model.dynamics if d.per_row]
        if needs_users and not with_users:
            raise ValueError(
                f"events file {path} has no user_id column, and the model's {needs_users[0]} "
                "reads what each user bought after what: add user_id (raw ids; new users allowed)"
            )
        cols = [pl.col("item_id").cast(pl.Utf8), "timestamp"]
        frame = frame.select(*cols, *([pl.col("user_id").cast(pl.Utf8)] if with_users else []))
        frame = frame.drop_nulls()
        times = _unix_seconds(frame["timestamp"], self.granularity, path)
        ids = frame["item_id"].to_list()
        idx = [self.index.get(i, 0) for i in ids]
        unknown = [i for i, j in zip(ids, idx, strict=True) if j == 0]
        items = torch.tensor(idx, dtype=torch.long)
        known = items > 0
        items, times = items[known], times[known]
        users = None
        if with_users:  # known users keep their index; new ones get fresh ones after them
            fresh: dict[str, int] = {}
            raw = frame["user_id"].to_list()
            codes = [self.users.get(u) for u in raw]
            codes = [
                c if c is not None else fresh.setdefault(u, len(self.users) + len(fresh))
                for u, c in zip(raw, codes, strict=True)
            ]
            users = torch.tensor(codes, dtype=torch.long)[known]
        read = {"events": len(items), "items": int(torch.unique(items).numel())}
        if len(times):
            read |= {"first": int(times.min()), "last": int(times.max())}
            self._events_span = (read["first"], read["last"])
        log = self.model.event_log if append else None
        if log is not None:
            if users is not None:
                users = torch.cat([log.users, users]) if log.has_users else None
            items, times = torch.cat([log.items, items]), torch.cat([log.times, times])
        self.model.set_event_log(EventLog(items, times, self.model.num_items, users=users))
        return EventsRead(
            path=str(path),
            events=read["events"],
            items=read["items"],
            unknown_events=len(unknown),
            unknown_ids=list(dict.fromkeys(unknown)),
            null_rows=total - frame.height,
            first=read.get("first"),
            last=read.get("last"),
            appended=append,
        )

    def query_time(self, at: datetime | date | str | int | None) -> int:
        """Unix seconds of ``at`` (None: now), floored to days for day-granular data."""
        return to_unix(now_unix() if at is None else at, self.granularity, name="at")

    # ------------------------------------------------------------------ recommend
    def recommend(
        self,
        history: list[str] | None = None,
        at: datetime | date | str | int | None = None,
        k: int = 10,
        user_id: str | None = None,
        timestamps: list[int] | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` items for a history at query time ``at``.

        Args:
            history: Raw item ids (ASINs) in time order. For a known ``user_id`` they are
                appended to the user's history from the dataset. Unknown ids are skipped with
                a warning naming them (an error if none is known and there is no other history).
            at: When the recommendation is asked for (default: now, UTC).
            k: How many items (>= 1).
            user_id: A user of the dataset (their full history is used), or None / an unknown
                id with ``history`` (a user the model never saw).
            timestamps: Unix seconds of ``history``'s events; default: all at ``at`` (a
                session happening now).

        Returns:
            ``k`` recommendations, best first (fewer if the catalogue runs out).
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        query = self.query_time(at)
        items, times, ratings, event_rows = [], [], [], []
        known_user = user_id is not None and user_id in self.users
        if known_user:
            items, times, ratings, event_rows = self.user_history(user_id)
        history = list(history or [])
        if timestamps is not None and len(timestamps) != len(history):
            raise ValueError(f"{len(timestamps)} timestamps for {len(history)} history items")
        unknown = [h for h in history if h not in self.index]
        if unknown:
            warnings.warn(
                f"{len(unknown)} unknown item id(s) skipped "
                f"(not in {self.data_dir / 'items.parquet'}): "
                + ", ".join(unknown[:20])
                + (" ..." if len(unknown) > 20 else ""),
                stacklevel=2,
            )
        for j, h in enumerate(history):
            if h in self.index:
                items.append(self.index[h])
                times.append(int(timestamps[j]) if timestamps is not None else query)
                ratings.append(float("nan"))
                event_rows.append(0)  # not an event of the dataset
        if not items:
            who = f"user {user_id!r} is not in the dataset and " if user_id else ""
            raise ValueError(
                f"{who}no known history items: pass --history with item ids of the dataset"
            )
        batch = history_batch(
            items,
            times,
            ratings,
            query,
            self.max_len,
            self.users.get(user_id, -1),
            event_rows=event_rows,
            device=self.device,
        )
        with torch.no_grad():
            user_vec = self.model(batch)  # [1, D]
            last = last_items(batch)  # [1]: what followed it matters to transition dynamics
            bias = self.model.dynamics_term(batch["target_time"], last)  # [1, N + 1] as of `at`
            scores, top = _topk(
                user_vec.float(), self.item_vectors(), k, batch["exclude_items"], bias
            )
        return [
            Recommendation(self.item_ids[i], self.titles[i], float(s))
            for i, s in zip(top[0].tolist(), scores[0].tolist(), strict=True)
            if i > 0
        ]

    def item_vectors(self) -> torch.Tensor:
        """The catalogue through the model's item tower, ``[N + 1, D]`` (computed once)."""
        if self._item_vecs is None:
            with torch.no_grad():
                self._item_vecs = self.model.item_vectors().float()
        return self._item_vecs


def _topk(user_vec, item_vecs, k, exclude, bias=None) -> tuple[torch.Tensor, torch.Tensor]:
    from mmrec.evaluation import topk_items

    k = max(1, min(k, item_vecs.shape[0] - 1))
    return topk_items(user_vec, item_vecs, k, exclude, bias=bias)


def _unix_seconds(column: pl.Series, granularity: str | None, path: Path) -> torch.Tensor:
    """``[E]`` int64 unix seconds of an events file's timestamp column (numbers, dates,
    datetimes or ISO strings), floored to days for day-granular models."""
    if column.dtype == pl.Date:
        secs = column.cast(pl.Int64) * DAY
    elif isinstance(column.dtype, pl.Datetime):
        secs = column.dt.epoch("s")
    elif column.dtype.is_numeric():
        secs = column.cast(pl.Float64).floor().cast(pl.Int64)
    else:
        values = column.cast(pl.Utf8).to_list()
        parsed = {v: to_unix(v, name=f"timestamp in {path}") for v in set(values)}
        secs = pl.Series([parsed[v] for v in values], dtype=pl.Int64)
    out = torch.from_numpy(secs.to_numpy().astype("int64"))
    return out - out % DAY if granularity == "day" else out
