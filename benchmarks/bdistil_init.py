"""B-DISTIL members from scratch vs initialised from the teacher, on one small training budget.

For one data set, the cached default teacher (``runs/teachers``) and the first ``--limit-train`` training
rows for ``--epochs`` epochs per member/student (the budget every variant gets):

* ``scratch``: B-DISTIL with fresh members (``sizing`` as given), then RESCHED and NO-RESCHED of those sizes;
* ``teacher/<head>``: B-DISTIL whose members are channel-pruned copies of the teacher (keep ratios sized by
  measured latency, :func:`distill.progressive.sizing.keep_candidates`, or the ladder ``--keeps`` gives, which
  makes runs comparable whatever the machine's load), member ``t > 1`` starting from
  ``head_start`` = keep / zero / rescale; RESCHED and NO-RESCHED of the first variant's keep ratios, also
  pruned copies of the teacher (the same initialisation).

Accuracy of every prefix on the test split, in torch (``prefix_accuracies``; export parity is tested
elsewhere). One torch thread.

    python benchmarks/bdistil_init.py --data mnist --limit-train 5000 --epochs 1 --json PATH
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first, whatever is installed

import torch

from distill.data import load_dataset
from distill.progressive import (
    BaselineConfig,
    Ensemble,
    ProgressiveConfig,
    PrunedCandidate,
    candidate_from_dict,
    limit_training,
    no_resched_students,
    prefix_accuracies,
    progressive_ensemble,
    resched_ensemble,
)
from distill.teachers import load_teacher
from distill.train import accuracy, predict_logits


def _pct(values: list[float]) -> str:
    return " / ".join(f"{100 * v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--limit-train", type=int)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=0.0, help="B-DISTIL residual temperature (0 = RMS)")
    parser.add_argument("--step", choices=("potential", "kl"), default="potential", help="B-DISTIL step size rule")
    parser.add_argument("--refine-epochs", type=int, default=0, help="B-DISTIL refinement epochs per member (0 = none)")
    parser.add_argument("--refine-loss", choices=("logits", "kd"), default="logits", help="B-DISTIL refinement loss")
    parser.add_argument("--sizing", choices=("auto", "latency", "macs"), default="auto")
    parser.add_argument(
        "--keeps", help="teacher-initialised members: this ladder of keep ratios (e.g. 0.35,0.5,0.6) instead of timing one"
    )
    parser.add_argument(
        "--heads",
        default="keep,zero,rescale,zero:rescale,rescale:rescale",
        help="head starts to compare: HEAD (member t > 1) or HEAD:FIRST (FIRST for member 1, default keep)",
    )
    parser.add_argument("--scratch", action=argparse.BooleanOptionalAction, default=True, help="include members from scratch")
    parser.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True, help="RESCHED and NO-RESCHED")
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    full = load_dataset(args.data, seed=args.seed)
    loaded = load_teacher("auto", full, runs_dir=args.runs, progress=False)
    teacher = loaded.module
    data = limit_training(full, args.limit_train)
    predict_logits(teacher, data.x_train)
    common = dict(epochs=args.epochs, lr=args.lr, seed=args.seed, progress=False)
    boost = dict(temperature=args.temperature, step=args.step, refine_epochs=args.refine_epochs, refine_loss=args.refine_loss)
    x, y = full.x_test, full.y_test
    result: dict[str, Any] = {
        "dataset": full.name,
        "train_rows": len(data.x_train),
        "epochs": args.epochs,
        "step": args.step,
        "refine": [args.refine_epochs, args.refine_loss],
        "teacher_accuracy": accuracy(teacher, x, y),
        "variants": {},
    }

    def record(name: str, bd: Ensemble, rs: Ensemble, nr: list[torch.nn.Module], seconds: float) -> None:
        row = {
            "bdistil": prefix_accuracies(bd, x, y),
            "resched": prefix_accuracies(rs, x, y) if rs is not None else None,
            "no_resched": [accuracy(s, x, y) for s in nr] if nr is not None else None,
            "members": [m.to_dict() for m in bd.report.members],
            "seconds": round(seconds, 1),
        }
        result["variants"][name] = row
        print(f"{name:<16} bdistil {_pct(row['bdistil'])}", flush=True)
        if rs is not None:
            print(f"{'':<16} resched {_pct(row['resched'])}  no_resched {_pct(row['no_resched'])}", flush=True)

    # head: t>1[:t=1]; scratch first unless --no-scratch
    variants = [("scratch", "zero")] * args.scratch + [("teacher", h) for h in args.heads.split(",") if h]
    # the teacher variants share one ladder of keep ratios: timed by the first, or given
    ladder: tuple[Any, ...] = tuple(PrunedCandidate(float(k)) for k in args.keeps.split(",")) if args.keeps else ()
    for init, head in variants:
        t0 = time.perf_counter()
        cfg = ProgressiveConfig(
            members=args.members,
            sizing=args.sizing,
            init=init,
            head_start=head.split(":")[0],
            first_head=(head.split(":") + ["keep"])[1],
            candidates=ladder if init == "teacher" else (),
            **boost,
            **common,
        )
        bd = progressive_ensemble(teacher, data, cfg)
        first_teacher = init == "teacher" and not any(v.startswith("teacher/") for v in result["variants"])
        if first_teacher and not ladder:
            ladder = tuple(candidate_from_dict(c) for c in bd.report.settings["candidates"])
            result["member_sizing"] = bd.report.settings.get("member_sizing")
        rs, nr = None, None
        if args.baselines and (
            init == "scratch" or first_teacher
        ):  # baselines once per initialisation (the head start does not concern them)
            sizes = [m.candidate for m in bd.report.members]
            base = BaselineConfig(**common)
            rs = resched_ensemble(teacher, data, sizes, base)
            nr, _ = no_resched_students(teacher, data, list(np.cumsum([m.macs for m in bd.report.members])), sizes[0], base)
        record(f"{init}/{head}" if init == "teacher" else init, bd, rs, nr, time.perf_counter() - t0)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"teacher {100 * result['teacher_accuracy']:.2f}%; {result['seconds']} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
