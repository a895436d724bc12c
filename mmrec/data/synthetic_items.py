"""Moved to :mod:`mmrec.synthetic.items` (issue 38); the old import path still works."""

from mmrec.synthetic.items import *  # noqa: F403
