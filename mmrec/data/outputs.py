"""Moved to :mod:`mmrec.ingest.outputs` (issue 38); the old import path still works."""

from mmrec.ingest.outputs import *  # noqa: F403
