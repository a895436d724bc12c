"""Moved to :mod:`mmrec.ingest.prepare` (issue 38); the old import path still works."""

from mmrec.ingest.prepare import *  # noqa: F403
from mmrec.ingest.prepare import (  # noqa: F401
    FORMAT_VERSION,
    READERS,
    SPLITS,
    TABLE_KEYS,
    build_items,
    build_parser,
    config_from_args,
    file_digest,
    input_identity,
    settings,
)
