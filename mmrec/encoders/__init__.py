"""Pluggable encoders: item-side (id, content) and event-side (time, rating, context)."""

from mmrec.encoders.base import BuildContext, Encoder, EventEncoder, ItemEncoder
from mmrec.encoders.item_id import ItemIdEncoder
from mmrec.encoders.rating import RatingEncoder
from mmrec.encoders.time import QueryTimeEncoder, TimestampEncoder
from mmrec.encoders.user_context import UserContextEncoder

__all__ = [
    "BuildContext",
    "Encoder",
    "EventEncoder",
    "ItemEncoder",
    "ItemIdEncoder",
    "QueryTimeEncoder",
    "RatingEncoder",
    "TimestampEncoder",
    "UserContextEncoder",
]
