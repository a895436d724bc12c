"""Every config and result the README and docs/ name exists (a renamed or removed file fails
here, not in a reader's shell); every config under configs/ is parsed by test_configs.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("**/*.md"))]
# a path without placeholders (<name>, {a,b}) or globs
PATH = re.compile(r"(?<![\w/.<{*-])((?:configs|benchmarks/results)/[\w./-]*[\w/])")


def _named(doc: Path) -> list[str]:
    return sorted({m.group(1).rstrip(".") for m in PATH.finditer(doc.read_text())})


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_and_result_a_document_names_exists(doc):
    named = _named(doc)
    missing = [p for p in named if not (REPO / p).exists()]
    assert not missing, f"{doc.name} names files that do not exist: {missing}"
