"""The guide documents every flag and variable of ``legacygpu operator run`` (a new one fails this)."""

from __future__ import annotations

import re
from pathlib import Path

from legacygpu.cli.operator import run
from legacygpu.operator import config

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "CLUSTER_DEPLOYMENT_GUIDE.md"


def test_every_operator_flag_and_variable_is_in_the_guide() -> None:
    text = GUIDE.read_text()
    missing = []
    for param in run.params:
        for flag in [*param.opts, *param.secondary_opts]:
            if f"`{flag}`" not in text and f"{flag}`" not in text:
                missing.append(flag)
        envvar = getattr(param, "envvar", None)
        for name in [envvar] if isinstance(envvar, str) else list(envvar or ()):
            if f"`{name}`" not in text:
                missing.append(name)
    for suffix in re.findall(r'_env\("([A-Z_]+)"', Path(config.__file__).read_text()):
        if f"LEGACYGPU_OPERATOR_{suffix}" not in text:
            missing.append(f"LEGACYGPU_OPERATOR_{suffix}")
    assert not missing, f"not documented in {GUIDE.name}: {missing}"
