"""Pluggable encoders: item-side (id, content) and event-side (time, rating, context)."""

from mmrec.encoders.base import BuildContext, Encoder, EventEncoder, ItemEncoder

__all__ = ["BuildContext", "Encoder", "EventEncoder", "ItemEncoder"]
