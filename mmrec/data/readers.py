"""Moved to :mod:`mmrec.ingest.readers` (issue 38); the old import path still works."""

from mmrec.ingest.readers import *  # noqa: F403
from mmrec.ingest.readers import (  # noqa: F401
    AMAZON2014_REVIEW_KEYS,
    AMAZON2023_REVIEW_KEYS,
    MS_THRESHOLD,
    OPTIONAL,
    REQUIRED,
    Reader,
    extra_fields,
)
