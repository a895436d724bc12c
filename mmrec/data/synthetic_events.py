"""Moved to :mod:`mmrec.synthetic.events` (issue 38); the old import path still works."""

from mmrec.synthetic.events import *  # noqa: F403
