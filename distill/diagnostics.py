"""Students that fail say so: accuracy checks run after training, with the likely fix named.

Two symptoms are checked, each against the sampling noise of the split the accuracy was measured on
(the binomial standard error ``sqrt(p (1 - p) / n)``, ``p`` estimated with add-one smoothing):

* **near chance** — a student or ensemble prefix whose accuracy is within ``3 σ + 5`` points of chance
  (``1 / classes``): it learned next to nothing;
* **falls as members are added** — an ensemble prefix more than ``2 σ`` below the best shorter prefix:
  later members hurt instead of refining.

Each finding is one line (the CLI prints it as ``warning: ...``) and is also recorded in the reports.
"""

from __future__ import annotations

import math
from typing import Sequence

__all__ = ["ensemble_warnings", "student_warnings"]


def _sigma(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` on ``n`` samples, with the add-one (Laplace) estimate of ``p`` so that
    a perfect score on a small split still has noise (45 samples at 100%: 2.1 points, not 0)."""
    n = max(n, 1)
    smoothed = (p * n + 1.0) / (n + 2.0)
    return math.sqrt(smoothed * (1.0 - smoothed) / n)


def student_warnings(
    name: str, accuracy: float, classes: int, n: int, fix: str = "train longer (more epochs) or use a larger student"
) -> list[str]:
    """A one-line warning when ``accuracy`` (a fraction, on ``n`` samples) is near chance for ``classes``."""
    chance = 1.0 / classes
    if accuracy <= chance + 3.0 * _sigma(chance, n) + 0.05:
        return [f"{name} is near chance ({100 * accuracy:.1f}% with {classes} classes, chance {100 * chance:.1f}%): {fix}"]
    return []


def ensemble_warnings(name: str, prefix_accuracies: Sequence[float], classes: int, n: int) -> list[str]:
    """Warnings for an anytime ensemble's prefixes (accuracy of members 1..t, fractions on ``n`` samples)."""
    found: list[str] = []
    for t, acc in enumerate(prefix_accuracies, start=1):
        found += student_warnings(
            f"{name} prefix F_{t}",
            acc,
            classes,
            n,
            fix="train each member longer (--epochs) or start the ladder at a larger member",
        )
    best, best_t = -1.0, 0
    for t, acc in enumerate(prefix_accuracies, start=1):
        if best >= 0 and acc < best - 2.0 * _sigma(best, n):
            found.append(
                f"{name} prefix F_{t} ({100 * acc:.1f}%) is below F_{best_t} ({100 * best:.1f}%) by more than the noise of "
                f"{n} samples: later members hurt; train members longer (--epochs) or use larger members"
            )
        if acc > best:
            best, best_t = acc, t
    return found
