"""Moved to :mod:`mmrec.ingest.clean` (issue 38); the old import path still works."""

from mmrec.ingest.clean import *  # noqa: F403
