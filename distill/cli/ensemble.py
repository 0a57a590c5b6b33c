"""``anytime-edge ensemble``: distil a teacher into a progressive anytime ensemble (B-DISTIL) and export it.

Examples::

    anytime-edge ensemble --data mnist --teacher auto --members 4 --out runs/bdistil
    anytime-edge ensemble --data digits --teacher my_model.onnx --members 4 --out runs/bdistil-mine
    anytime-edge ensemble --data mnist --members 4 --baseline resched --like runs/bdistil --out runs/resched
    anytime-edge ensemble --data mnist --members 4 --baseline no-resched --like runs/bdistil --out runs/noresched

B-DISTIL writes one bundle whose members combine by sum and pass their features to later members
(the manifest's connections). RESCHED writes one bundle whose members combine by mean. NO-RESCHED is
one student per prefix length, so it writes one single-member bundle per length: ``OUT/t1 .. OUT/tK``.
``--like BUNDLE`` sizes a baseline after a B-DISTIL bundle's members, with their initialisation (``--init
teacher`` bundles: pruned copies of the teacher); without it every member has the size of the cheapest
default candidate. ``--init teacher`` builds every member as a channel-pruned copy of the teacher (keep
ratios sized by measured latency; no connections) instead of from scratch. Prints the test accuracy of every prefix as ONNX Runtime computes
it (the export gates run the members chained, exactly as the device will).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from distill.cli._common import add_data_argument, add_progress_argument, add_teacher_arguments, resolve_teacher
from distill.cli._loss_args import add_loss_arguments, loss_from_args

HELP = "distil a teacher into a progressive ensemble (B-DISTIL)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_data_argument(parser)
    add_teacher_arguments(parser)
    parser.add_argument("--members", type=int, default=4, help="ensemble size K (default 4)")
    parser.add_argument("--baseline", choices=("resched", "no-resched"), help="build a baseline instead of B-DISTIL")
    parser.add_argument("--like", type=Path, help="a B-DISTIL bundle whose member sizes a baseline copies")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    parser.add_argument(
        "--epochs",
        type=int,
        default=0,
        help="training epochs per member/student; 0 (default) = about 30k samples' worth, 3 to 50",
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="peak Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--gamma", type=float, default=0.05, help="weak-learning margin of the edge check (default 0.05)")
    parser.add_argument(
        "--connect",
        choices=("none", "previous", "all"),
        help="connections tried first: none, the previous member's features (default), or all earlier; "
        "teacher-initialised members take none",
    )
    parser.add_argument(
        "--init",
        choices=("scratch", "teacher"),
        default="scratch",
        help="members built from scratch (default) or as channel-pruned copies of the teacher (Torch-Pruning), "
        "each keep ratio sized by measured latency; baselines given --like copy the bundle's init",
    )
    parser.add_argument(
        "--step",
        choices=("potential", "kl"),
        default="potential",
        help="member scale: the cosh line search of the reconstruction (default), or kl: the step that best "
        "matches the teacher's softmax (not in the paper)",
    )
    parser.add_argument(
        "--size-by",
        choices=("auto", "latency", "macs"),
        default="auto",
        help="how member sizes are chosen: each ~1/K of the teacher's measured ORT latency (latency), "
        "multiply-accumulates (macs), or latency where the teacher takes >= 0.1 ms (auto, default)",
    )
    parser.add_argument(
        "--refine-epochs",
        type=int,
        default=0,
        help="refinement epochs of each accepted member (not in the paper; default 0: none)",
    )
    parser.add_argument(
        "--refine-loss",
        choices=("logits", "kd"),
        default="logits",
        help="the refinement's loss: least squares to the residual (logits), or Hinton KD of the prefix with the "
        "member against the teacher, with labels (kd)",
    )
    parser.add_argument("--limit-train", type=int, help="train on only the first N training samples (quicker)")
    add_loss_arguments(parser, default="kd")
    parser.add_argument("--json", type=Path, help="also write the build report and prefix accuracies here")
    add_progress_argument(parser)


def _sizes_like(bundle: Path, members: int) -> tuple[list[Any], list[int]]:
    """Candidates and MACs of a B-DISTIL bundle's members (from their manifest ``info``)."""
    from distill.errors import TrainingError
    from distill.progressive import candidate_from_dict
    from edge_runtime.bundle import load_bundle

    manifest = load_bundle(bundle).manifest
    try:
        rows = [(candidate_from_dict(m.info["candidate"]), int(m.info["macs"])) for m in manifest.members]
    except (KeyError, TypeError, TrainingError) as exc:
        raise TrainingError(f"{bundle} was not written by `anytime-edge ensemble`; pass a B-DISTIL bundle to --like") from exc
    if len(rows) < members:
        raise TrainingError(f"{bundle} has {len(rows)} members but --members is {members}; lower --members")
    return [c for c, _ in rows[:members]], [m for _, m in rows[:members]]


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from distill import distributed
    from distill.diagnostics import ensemble_warnings, student_warnings
    from distill.errors import TrainingError
    from distill.models import build_model
    from distill.progressive import (
        BaselineConfig,
        ProgressiveConfig,
        PrunedCandidate,
        count_macs,
        default_candidates,
        limit_training,
        no_resched_students,
        progressive_ensemble,
        resched_ensemble,
    )
    from exporters import export_ensemble, export_model

    torch.set_num_threads(1)  # small members on a shared CPU: one thread is fastest and fair to others
    if args.members < 1:
        raise TrainingError("--members must be >= 1")
    loaded, full = resolve_teacher(args)
    teacher = loaded.module
    dataset = limit_training(full, args.limit_train)
    task = full.task_spec()
    heldout = (full.x_test, full.y_test)
    teacher_acc = float(loaded.metrics["test_accuracy"])
    metadata = {"data": full.name, "teacher": loaded.source, "teacher_kind": loaded.kind, "teacher_test_accuracy": teacher_acc}
    rows: list[tuple[str, float]] = []
    summary: dict[str, Any]

    if args.baseline is None:
        cfg = ProgressiveConfig(
            members=args.members,
            connect=args.connect or "",
            init=args.init,
            step=args.step,
            gamma=args.gamma,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            refine_epochs=args.refine_epochs,
            refine_loss=args.refine_loss,
            seed=args.seed,
            progress=args.progress,
            sizing=args.size_by,
        )
        ensemble = progressive_ensemble(teacher, dataset, cfg)
        if not distributed.main_continues_alone():  # under torchrun: every rank trained, rank 0 exports
            return 0
        info = [{"method": ensemble.report.method, **m.to_dict()} for m in ensemble.report.members]
        result = export_ensemble(
            ensemble.members,
            task,
            args.out,
            heldout=heldout,
            connections=ensemble.connections,
            combine="sum",
            name="bdistil",
            metadata={**metadata, "method": ensemble.report.method, "report": ensemble.report.to_dict()},
            member_info=info,
        )
        rows = [
            (f"F_{k + 1} ({m.candidate.describe()}, from {list(m.connections) or '-'})", g.onnx_accuracy)
            for k, (m, g) in enumerate(zip(ensemble.report.members, result.reports))
        ]
        if ensemble.report.stopped:
            print(f"note: stopped after {len(ensemble.members)} members: {ensemble.report.stopped}")
        summary = ensemble.report.to_dict()
    else:
        loss = loss_from_args(args)
        base = BaselineConfig(
            loss=loss.name,
            loss_params=tuple(sorted(loss.params().items())),
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            seed=args.seed,
            progress=args.progress,
        )
        if args.like is not None:
            candidates, macs = _sizes_like(args.like, args.members)
            if args.init == "teacher" and not all(isinstance(c, PrunedCandidate) for c in candidates):
                raise TrainingError(f"{args.like} was built with --init scratch; pass a teacher-initialised bundle to --like")
        elif args.init == "teacher":
            raise TrainingError(
                "a teacher-initialised baseline copies its keep ratios: pass --like a B-DISTIL bundle built with --init teacher"
            )
        else:
            first = default_candidates(dataset)[0]
            candidates = [first] * args.members
            macs = [count_macs(build_model(first.model_config(dataset)), dataset.input_shape)] * args.members
        if args.baseline == "resched":
            ensemble = resched_ensemble(teacher, dataset, candidates, base)
            if not distributed.main_continues_alone():
                return 0
            result = export_ensemble(
                ensemble.members,
                task,
                args.out,
                heldout=heldout,
                combine="mean",
                name="resched",
                metadata={**metadata, "method": "resched", "report": ensemble.report.to_dict()},
                member_info=[{"method": "resched", **m.to_dict()} for m in ensemble.report.members],
            )
            rows = [
                (f"mean of {k + 1} ({m.candidate.describe()})", g.onnx_accuracy)
                for k, (m, g) in enumerate(zip(ensemble.report.members, result.reports))
            ]
            summary = ensemble.report.to_dict()
        else:
            students, report = no_resched_students(teacher, dataset, list(np.cumsum(macs)), candidates[0], base)
            if not distributed.main_continues_alone():
                return 0
            for t, (student, m) in enumerate(zip(students, report.members)):
                single = export_model(
                    student,
                    task,
                    args.out / f"t{t + 1}",
                    heldout=heldout,
                    name=f"no_resched_t{t + 1}",
                    metadata={**metadata, "method": "no_resched", "prefix": t + 1},
                    info={"method": "no_resched", **m.to_dict()},
                )
                rows.append((f"t={t + 1}: one {m.candidate.describe()} ({m.macs} MACs)", single.reports[0].onnx_accuracy))
            summary = report.to_dict()

    print(f"teacher test accuracy {100 * teacher_acc:.2f}%")
    for label, acc in rows:
        print(f"{label:<48} test accuracy {100 * acc:.2f}%")
    accs, n_test = [a for _, a in rows], len(full.y_test)
    if args.baseline == "no-resched":  # independent students, one per length: each judged alone
        warnings = [w for t, a in enumerate(accs, 1) for w in student_warnings(f"no-resched t={t}", a, full.num_classes, n_test)]
    else:
        warnings = ensemble_warnings(args.baseline or "B-DISTIL", accs, full.num_classes, n_test)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    print(f"bundle: {args.out}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {**summary, "teacher_test_accuracy": teacher_acc, "prefix_test_accuracy": accs, "warnings": warnings}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0
