"""Moved (issue 38): refit twins are planned in :mod:`mmrec.experiments.plan` and run in
:mod:`mmrec.experiments.execute`; the old import path still works."""

from mmrec.experiments.execute import refit_and_test  # noqa: F401
from mmrec.experiments.plan import SUFFIX, refit_twins  # noqa: F401
