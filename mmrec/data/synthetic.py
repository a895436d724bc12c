"""Moved to :mod:`mmrec.synthetic.dataset` (issue 38); the old import path still works."""

from mmrec.synthetic.dataset import *  # noqa: F403
