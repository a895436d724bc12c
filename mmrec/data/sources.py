"""Moved to :mod:`mmrec.ingest.sources` (issue 38); the old import path still works."""

from mmrec.ingest.sources import *  # noqa: F403
