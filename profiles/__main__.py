"""``python -m profiles``: profile and select on a runtime-only install."""

import sys

from profiles.cli import main

sys.exit(main())
