"""Moved to :mod:`mmrec.ingest.rawfiles` (issue 38); the old import path still works."""

from mmrec.ingest.rawfiles import *  # noqa: F403
