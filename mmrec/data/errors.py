"""Moved to :mod:`mmrec.ingest.errors` (issue 38); the old import path still works."""

from mmrec.ingest.errors import *  # noqa: F403
