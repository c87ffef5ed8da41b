#!/usr/bin/env python3
"""The fusionsearch command line, run from a clone without installing the package:
``python cli.py run --backbone resnet18`` is ``fusionsearch run --backbone resnet18``.

The design card puts ``cli.py`` here, beside ``fusionsearch/``, ``recipes/`` and ``tests/``. The
command line itself lives in ``fusionsearch/cli.py``, so that an installed package has it too
(the ``fusionsearch`` console script) without claiming a top-level module named ``cli``; this
file only puts the clone first on the import path and hands over. The dependencies still come
from ``pip install -e .`` (or ``pip install -r`` of pyproject's list).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fusionsearch.cli import main

if __name__ == "__main__":
    main()
