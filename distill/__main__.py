"""``python -m distill COMMAND ...``: the ``anytime-edge`` command line, the form ``torchrun -m distill`` starts.

torchrun --standalone --nproc_per_node=2 -m distill train-teacher --data mnist --out runs/teacher
"""

from __future__ import annotations

import sys

from distill.cli import main

if __name__ == "__main__":
    sys.exit(main())
