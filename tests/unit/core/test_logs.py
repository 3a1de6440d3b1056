"""legacygpu.core.logs.quieted: a command's quieting ends with the command."""

from __future__ import annotations

import logging

import pytest

from legacygpu.core.logs import quieted


def test_quieted_raises_the_level_inside_and_restores_it_after_an_error() -> None:
    logger = logging.getLogger("legacygpu.test.quieted")
    logger.setLevel(logging.INFO)
    with pytest.raises(RuntimeError), quieted("legacygpu.test.quieted"):
        assert logger.level == logging.ERROR
        raise RuntimeError("the command failed")
    assert logger.level == logging.INFO
