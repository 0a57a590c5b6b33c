"""``python -m edge_runtime``: the runtime commands on a runtime-only install."""

import sys

from edge_runtime.cli import main

sys.exit(main())
