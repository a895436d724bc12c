"""Moved to :mod:`mmrec.synthetic.raw` (issue 38); the old import path still works."""

from mmrec.synthetic.raw import *  # noqa: F403
from mmrec.synthetic.raw import (  # noqa: F401
    RELEASES,
)
