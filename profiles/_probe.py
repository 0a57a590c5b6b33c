"""The memory probe: ``python -m profiles._probe SPEC_JSON`` loads and runs a model, prints its memory.

A fresh process that imports only what a runtime process imports, so its baseline and per-member RSS
deltas describe a serving process (see :mod:`profiles.measure`). The last line of stdout is JSON.
"""

from __future__ import annotations

import json
import sys

from profiles.errors import ProfileError
from profiles.measure import _probe_main


def main(argv: list[str]) -> int:
    try:
        print(json.dumps(_probe_main(json.loads(argv[0]))))
    except (ProfileError, OSError, KeyError, ValueError) as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
