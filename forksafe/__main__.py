from __future__ import annotations

import sys

from forksafe.cli import main

sys.exit(main())
