"""Moved to :mod:`mmrec.ingest.lines` (issue 38); the old import path still works."""

from mmrec.ingest.lines import *  # noqa: F403
