from __future__ import annotations

import sys

from .setup.cli import main

sys.exit(main())
