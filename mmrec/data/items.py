"""Moved to :mod:`mmrec.ingest.items` (issue 38); the old import path still works."""

from mmrec.ingest.items import *  # noqa: F403
