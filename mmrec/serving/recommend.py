"""`mmrec recommend`: time-aware top-K for a known user or a raw history, from a checkpoint."""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from mmrec.calendar import DAY
from mmrec.serving.recommender import EventsRead, Recommendation, Recommender

__all__ = [
    "RecommendConfig",
    "build_parser",
    "config_from_args",
    "main",
    # moved to mmrec.serving.recommender, still importable here
    "EventsRead",
    "Recommendation",
    "Recommender",
]


@dataclass
class RecommendConfig:
    """Settings of ``mmrec recommend``: time-aware top-K items from a checkpoint.

    The query time (``at``) is a model input: with a time-aware model the same history gets
    different items in December and in July.

    Args:
        ckpt_path: Lightning checkpoint (.ckpt) of a trained model; it alone rebuilds the model.
        user: A user id of the dataset; their full history is used.
        history: Comma-separated raw item ids (ASINs) in time order, for a user the model never
            saw (appended after a known ``user``'s history); they are taken as happening at
            ``at``.
        at: Query time, YYYY-MM-DD or an ISO datetime (UTC). Default: now; the time used is
            printed, with a warning when it lies outside the data's time range.
        k: Number of items to recommend (>= 1).
        json: Print JSON instead of a table.
        data_dir: The prepared dataset folder (default: the one the checkpoint was trained on).
        device: Torch device to run the model on.
        trust_module: Packages outside mmrec that the checkpoint's components may be imported
            from (importing runs code: only for checkpoints you trust).
        events: A newer log of events for the model's item dynamics (a .parquet, .csv or .tsv
            with columns item_id, the dataset's raw ids, and timestamp): the dynamics as of
            ``at`` are read from it instead of the dataset's events, without retraining.
            Events of unknown items are skipped and reported. A model with
            TransitionDynamics also needs a user_id column (who made each event).
        append_events: Add the ``events`` to the dataset's events instead of replacing them.
    """

    ckpt_path: str
    user: str | None = None
    history: str | None = None
    at: str | None = None
    k: int = 10
    json: bool = False
    data_dir: str | None = None
    device: str = "cpu"
    trust_module: list[str] | None = None
    events: str | None = None
    append_events: bool = False


def build_parser():
    """The ``mmrec recommend`` argument parser (jsonargparse; ``--config`` takes a YAML file)."""
    from mmrec.parsing import dataclass_parser

    return dataclass_parser(
        RecommendConfig, "mmrec recommend", "Time-aware top-K recommendations from a checkpoint."
    )


def config_from_args(argv: list[str] | None = None) -> RecommendConfig:
    """Parses command-line arguments into a RecommendConfig."""
    from mmrec.config import bool_flags
    from mmrec.parsing import parse_settings

    argv = bool_flags(sys.argv[1:] if argv is None else argv, ["json", "append_events"])
    return parse_settings(RecommendConfig, build_parser(), argv)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _report_events(read: EventsRead, has_dynamics: bool) -> None:
    """One line on stderr about an events file (and one per problem)."""
    if not has_dynamics:
        print(
            "mmrec recommend: warning: the model has no item dynamics: --events changes nothing",
            file=sys.stderr,
        )
    span = f", {_iso(read.first)} .. {_iso(read.last)}" if read.first is not None else ""
    how = "added to the dataset's events" if read.appended else "replacing the dataset's events"
    print(
        f"mmrec recommend: events from {read.path}: {read.events} events of {read.items} "
        f"items{span}, {how}",
        file=sys.stderr,
    )
    if read.unknown_events:
        shown = ", ".join(read.unknown_ids[:20]) + (" ..." if len(read.unknown_ids) > 20 else "")
        print(
            f"mmrec recommend: warning: {read.unknown_events} events of "
            f"{len(read.unknown_ids)} item id(s) unknown to the dataset skipped: {shown}",
            file=sys.stderr,
        )
    if read.null_rows:
        print(
            f"mmrec recommend: warning: {read.null_rows} rows without item_id or timestamp skipped",
            file=sys.stderr,
        )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mmrec recommend``; returns the exit status."""
    cfg = config_from_args(argv)
    if not cfg.user and not cfg.history:
        print(
            "mmrec recommend: error: give --user USER_ID and/or --history ID,ID,...",
            file=sys.stderr,
        )
        return 2
    if cfg.k < 1:
        print(f"mmrec recommend: error: --k must be >= 1, got {cfg.k}", file=sys.stderr)
        return 2
    history = [h.strip() for h in (cfg.history or "").split(",") if h.strip()]
    try:
        rec = Recommender.from_checkpoint(cfg.ckpt_path, cfg.data_dir, cfg.device, cfg.trust_module)
        if cfg.user and cfg.user not in rec.users and not history:
            raise ValueError(
                f"unknown user {cfg.user!r} (not in {rec.data_dir / 'users.parquet'}): pass "
                "--history ID,ID,... for a user the model never saw"
            )
        query = rec.query_time(cfg.at)
        read = rec.use_events(cfg.events, cfg.append_events) if cfg.events else None
    except (FileNotFoundError, ValueError, KeyError, ImportError, TypeError) as err:
        print(f"mmrec recommend: error: {err}", file=sys.stderr)
        return 2
    if read is not None:
        _report_events(read, bool(len(rec.model.dynamics)))
    if cfg.at is None:
        print(
            f"mmrec recommend: no --at given: recommending for now, {_iso(query)}", file=sys.stderr
        )
    span = rec.time_range()
    if span is not None and not span[0] <= query <= span[1] + DAY:
        print(
            f"mmrec recommend: warning: the query time {_iso(query)} is outside the data's time "
            f"range ({_iso(span[0])} .. {_iso(span[1])}); the time encoders never saw such "
            "times: pass --at within the range for a meaningful time-aware list",
            file=sys.stderr,
        )
    unknown = [h for h in history if h not in rec.index]
    if unknown:
        print(
            f"mmrec recommend: warning: {len(unknown)} unknown item id(s) in --history skipped "
            f"(not in the dataset): {', '.join(unknown)}",
            file=sys.stderr,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported above
            recs = rec.recommend(history, at=query, k=cfg.k, user_id=cfg.user)
    except (ValueError, KeyError) as err:
        print(f"mmrec recommend: error: {err}", file=sys.stderr)
        return 2
    if len(recs) < cfg.k:
        print(
            f"mmrec recommend: --k {cfg.k} capped at {len(recs)}: the catalogue has "
            f"{rec.model.num_items} items and those in the history are not recommended",
            file=sys.stderr,
        )
    if cfg.json:
        out = {
            "user": cfg.user,
            "at": _iso(query),
            "known_user": bool(cfg.user and cfg.user in rec.users),
            "unknown_items": unknown,
            "recommendations": [asdict(r) for r in recs],
        }
        if read is not None:
            out["events"] = asdict(read)
        print(json.dumps(out, indent=2))
        return 0
    print(f"top {len(recs)} for {cfg.user or 'the given history'} at {_iso(query)}")
    width = max([len("item id"), *(len(r.item_id) for r in recs)])
    print(f"{'#':>3}  {'item id':<{width}}  {'score':>9}  title")
    for i, r in enumerate(recs, 1):
        title = (r.title or "")[:70]
        print(f"{i:>3}  {r.item_id:<{width}}  {r.score:>9.4f}  {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
