"""Moved to :mod:`mmrec.ingest.stream` (issue 38); the old import path still works."""

from mmrec.ingest.stream import *  # noqa: F403
