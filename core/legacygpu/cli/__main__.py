"""``python -m legacygpu.cli``: the same as the ``legacygpu`` command."""

from legacygpu.cli import main

main()
