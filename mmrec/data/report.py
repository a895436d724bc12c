"""Moved to :mod:`mmrec.ingest.report` (issue 38); the old import path still works."""

from mmrec.ingest.report import *  # noqa: F403
