"""The guide's limits table says what the code does: every limit setting, with its default, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from legacygpu.core.config import Settings
from legacygpu.core.limits import Limits

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "CLUSTER_DEPLOYMENT_GUIDE.md"
ROW = re.compile(r"^\| `LEGACYGPU_([A-Z_]+)` \| (\d+) \|", re.MULTILINE)


def _section() -> str:
    text = GUIDE.read_text()
    start = text.index("### Limits and security")
    return text[start : text.index("\n## ", start)]


def test_limits_table_matches_the_settings() -> None:
    rows = {name.lower(): int(default) for name, default in ROW.findall(_section())}
    limit_fields = {"max_request_bytes", *Limits.model_fields}
    assert set(rows) == limit_fields, "the table lists exactly the limit settings"
    for name, default in rows.items():
        assert Settings.model_fields[name].default == default, name
    assert Settings().limits == Limits(), "the settings' defaults are the limits' defaults"


def test_the_guide_links_no_missing_document() -> None:
    docs = GUIDE.parent
    for page in docs.glob("*.md"):
        for target in re.findall(r"docs/([A-Za-z0-9_.-]+\.md)", page.read_text()):
            assert (docs / target).is_file(), f"{page.name} names docs/{target}, which does not exist"
