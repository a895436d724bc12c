"""Moved to :mod:`mmrec.ingest.metalines` (issue 38); the old import path still works."""

from mmrec.ingest.metalines import *  # noqa: F403
