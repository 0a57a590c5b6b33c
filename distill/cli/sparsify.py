"""``anytime-edge sparsify``: sparse students, exported as one-member bundles with the zeros baked in.

    anytime-edge sparsify fcpts --data mnist --target 0.8 [--route ste|sparsity-only] --out OUT
    anytime-edge sparsify dsd2  --data mnist [--noise 0.3] --rounds 20 --out OUT [--plot curves.png]
    anytime-edge sparsify channels --data mnist --keep 0.5 --out OUT

fcpts and dsd2 print accuracy, achieved sparsity, file size raw and deflated, and ORT latency measured
against the dense model in the same run — and say plainly that ONNX Runtime's CPU kernels gain no speed
from zeros. ``channels`` is the separate, structured option: it removes whole channels, rebuilds smaller
layers and fine-tunes them by distillation, so the measured latency can really drop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distill.cli._common import DefaultsHelpFormatter, add_data_argument, add_progress_argument, add_teacher_arguments

HELP = "sparse students: FCPTS sparsity allocation or DSD² pruning"


def configure(parser: argparse.ArgumentParser) -> None:
    methods = parser.add_subparsers(dest="method", metavar="METHOD")
    methods.required = True

    fcpts = methods.add_parser(
        "fcpts",
        help="post-training: learn per-layer sparsity under a global target (no labels)",
        formatter_class=DefaultsHelpFormatter,
    )
    add_data_argument(fcpts, default="mnist")
    add_teacher_arguments(fcpts)
    fcpts.add_argument("--target", type=float, default=0.8, help="global sparsity of the Conv/Linear weights (0.8 = 80%% zeros)")
    fcpts.add_argument(
        "--route",
        choices=("ste", "sparsity-only"),
        default="ste",
        help="ste: the mask gradient reaches the thresholds (paper); sparsity-only: as the authors' code",
    )
    fcpts.add_argument(
        "--init",
        choices=("erk", "global", "uniform"),
        default="erk",
        help="starting allocation: erk (the paper) or global magnitude (measured to do better here)",
    )
    fcpts.add_argument("--iterations", type=int, default=1600, help="SGD steps on the per-layer scores")
    fcpts.add_argument("--calibration", type=int, default=1024, help="unlabeled calibration inputs from the training split")
    fcpts.add_argument("--density", choices=("histogram", "kde"), default="histogram", help="estimator of p(t) in dS/dt")
    fcpts.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    fcpts.add_argument("--report", type=Path, help="also write the allocation report as JSON here")

    dsd2 = methods.add_parser(
        "dsd2", help="iterative global magnitude pruning, vanilla vs distilled (DSD²)", formatter_class=DefaultsHelpFormatter
    )
    add_data_argument(dsd2, default="mnist")
    dsd2.add_argument("--limit-train", type=int, default=2000, help="training samples used (a small set shows the dip)")
    dsd2.add_argument("--family", default="mlp", help="model family of both runs (mlp, cnn1d, cnn2d, auto)")
    dsd2.add_argument("--width", type=int, default=256, help="hidden units / channels (over-parameterised shows the dip)")
    dsd2.add_argument("--depth", type=int, default=2, help="hidden layers / conv blocks")
    add_teacher_arguments(
        dsd2,
        default=None,
        extra_help="; given, both runs prune a copy of the teacher's layers (an "
        ".onnx teacher: of its dense proxy) instead of a fresh --family/--width model (default: none)",
    )
    dsd2.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="symmetric label noise added to the training labels (0: your labels as given; 0.3 shows the dip)",
    )
    dsd2.add_argument("--rounds", type=int, default=20, help="pruning rounds, 20%% of the remaining weights each")
    dsd2.add_argument("--epochs", type=int, default=10, help="training epochs of the dense model and of every round")
    dsd2.add_argument(
        "--dense-epochs", type=int, default=30, help="epochs of the dense model (fit the noise first; 0 = --epochs)"
    )
    dsd2.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate per round")
    dsd2.add_argument("--early-stop", action="store_true", help="stop the distilled run when validation accuracy drops")
    add_progress_argument(dsd2)
    dsd2.add_argument("--out", type=Path, required=True, help="bundle directory for the picked student")
    dsd2.add_argument("--plot", type=Path, help="PNG of accuracy and entropy vs sparsity (needs matplotlib)")
    dsd2.add_argument("--log", type=Path, help="JSON of both curves, the teacher round and the pick")
    _configure_channels(methods)


def _configure_channels(methods: Any) -> None:  # argparse's subparsers action (a private type)
    channels = methods.add_parser(
        "channels",
        help="structured: remove whole channels (smaller layers, real CPU speed)",
        formatter_class=DefaultsHelpFormatter,
    )
    add_data_argument(channels, default="mnist")
    add_teacher_arguments(channels)
    channels.add_argument("--keep", type=float, default=0.5, help="share of channels/units kept in every hidden layer")
    channels.add_argument("--finetune-epochs", type=int, default=2, help="KD fine-tuning epochs from the dense teacher")
    channels.add_argument("--finetune-samples", type=int, default=20000, help="training samples used to fine-tune")
    channels.add_argument("--out", type=Path, required=True, help="bundle directory to write")


def _run_channels(args: argparse.Namespace) -> int:
    from distill.cli._common import resolve_teacher
    from distill.sparse.deploy import export_student
    from distill.sparse.structured import channel_student

    loaded, dataset = resolve_teacher(args)
    teacher = loaded.layered("channel pruning", dataset, runs_dir=args.runs_dir, say=print)
    student, report = channel_student(
        teacher, dataset, args.keep, epochs=args.finetune_epochs, limit=args.finetune_samples, seed=args.seed
    )
    if not _main_continues_alone():  # under torchrun: every rank fine-tuned, rank 0 exports
        return 0
    print(
        f"channels kept {args.keep:.0%}: {report.params_dense} -> {report.params_shrunk} parameters; test accuracy "
        f"dense {report.accuracy_dense:.2%}, shrunk {report.accuracy_shrunk:.2%} before and "
        f"{report.accuracy_finetuned:.2%} after {report.finetune_epochs} KD epochs ({report.seconds:.1f} s)"
    )
    print("left whole: " + ("; ".join(f"{name} ({why})" for name, why in report.kept.items()) or "nothing"))
    result = export_student(
        student,
        dataset,
        args.out,
        name=f"channels-{round(args.keep * 100)}",
        info={"method": "channels", "keep": args.keep, **report.to_dict()},
    )
    for line in result.describe():
        print(line)
    _print_deploy(teacher, result, dataset, note=False)
    print(f"bundle: {result.path}")
    return 0


def _print_deploy(dense_model: Any, result: Any, dataset: Any, note: bool = True) -> dict[str, Any]:
    """Dense vs the exported sparse member: sizes and interleaved ORT latency, printed plainly."""
    from distill.sparse.deploy import compare_onnx, onnx_bytes

    sparse_blob = (result.path / result.manifest.members[0].file).read_bytes()  # exactly what was shipped
    comparison = compare_onnx(
        onnx_bytes(dense_model, dataset.x_test), sparse_blob, dataset.x_test, input_name=result.manifest.task.input.name
    )
    lines = comparison.describe()
    for line in lines if note else lines[:-1]:  # the zeros note is about unstructured sparsity
        print(line)
    return comparison.to_dict()


def _run_fcpts(args: argparse.Namespace) -> int:
    from distill.cli._common import resolve_teacher
    from distill.sparse.deploy import export_student
    from distill.sparse.fcpts import FCPTSConfig, fcpts_student
    from distill.sparse.masks import global_sparsity

    cfg = FCPTSConfig(
        target=args.target,
        route=args.route,
        init=args.init,
        iterations=args.iterations,
        calibration_samples=args.calibration,
        density=args.density,
        seed=args.seed,
    )
    loaded, dataset = resolve_teacher(args)
    teacher, metrics = loaded.layered("FCPTS", dataset, runs_dir=args.runs_dir, say=print), loaded.metrics
    student, report = fcpts_student(teacher, dataset, cfg=cfg)
    if not _main_continues_alone():  # under torchrun every rank computes the same allocation; rank 0 exports
        return 0
    print(
        f"FCPTS ({cfg.route}, {cfg.density} density) target {cfg.target:.1%}: learned {report.learned_global:.3%}, "
        f"final {report.final_global:.3%}{' (after exact projection)' if report.projected else ''}, "
        f"{report.seconds:.1f} s for {cfg.iterations} iterations"
    )
    print(
        f"layer sparsity ({cfg.init} init -> learned -> final): "
        + ", ".join(
            f"{n} {report.init_sparsities[n]:.2f}->{report.learned_sparsities[n]:.2f}->{report.final_sparsities[n]:.2f}"
            for n in report.final_sparsities
        )
    )
    print(
        f"test accuracy: teacher {metrics['test_accuracy']:.2%}, sparse student {report.test_accuracy:.2%} "
        f"(no fine-tuning), achieved sparsity {global_sparsity(student):.2%}"
        + (
            f"; {report.recalibrated_bn} BatchNorm layers re-estimated on the calibration inputs "
            f"({report.accuracy_before_recalibration:.2%} before)"
            if report.recalibrated_bn
            else ""
        )
    )
    result = export_student(
        student,
        dataset,
        args.out,
        name=f"fcpts-{round(cfg.target * 100)}",
        info={
            "method": "fcpts",
            "route": cfg.route,
            "target": cfg.target,
            "sparsity": report.final_global,
            "learned_sparsity": report.learned_global,
        },
    )
    for line in result.describe():
        print(line)
    deploy = _print_deploy(teacher, result, dataset)
    print(f"bundle: {result.path}")
    if args.report:
        args.report.write_text(json.dumps({"report": report.to_dict(), "deploy": deploy}, indent=2) + "\n")
    return 0


def _run_dsd2(args: argparse.Namespace) -> int:
    from distill.data import load_dataset
    from distill.models import ModelConfig
    from distill.sparse.deploy import export_student
    from distill.sparse.dsd2 import DSD2Config, find_dip, plot_curves, run_dsd2

    dataset = load_dataset(args.data, seed=args.seed, limit_train=args.limit_train)
    model_cfg: Any = ModelConfig(dataset.input_shape, dataset.num_classes, family=args.family, width=args.width, depth=args.depth)
    if args.teacher is not None:
        from distill.teachers import load_teacher

        loaded = load_teacher(args.teacher, dataset, runs_dir=args.runs_dir, inputs=args.teacher_inputs, progress=args.progress)
        model_cfg = loaded.layered("DSD² pruning", dataset, runs_dir=args.runs_dir, progress=args.progress, say=print)
        print(f"pruning a copy of the teacher {loaded.source} (test accuracy {loaded.metrics['test_accuracy']:.2%})")
    cfg = DSD2Config(
        rounds=args.rounds,
        epochs=args.epochs,
        dense_epochs=args.dense_epochs,
        lr=args.lr,
        noise=args.noise,
        seed=args.seed,
        early_stop=args.early_stop,
        progress=args.progress,
    )

    train_label = "train(noisy)" if cfg.noise else "train"

    def show(kind: str, r: Any) -> None:
        print(
            f"{kind:9s} round {r.round:2d}: sparsity {r.sparsity:6.2%}  {train_label} {r.train_accuracy:6.2%}  "
            f"val {r.val_accuracy:6.2%}  test {r.test_accuracy:6.2%}  entropy {r.entropy:.3f}  ({r.seconds:.1f} s)",
            flush=True,
        )

    result, student, dense = run_dsd2(dataset, model_cfg, cfg, on_round=show)
    if not _main_continues_alone():  # under torchrun: every rank trained the rounds, rank 0 writes
        return 0
    picked = result.distilled[result.picked_round]
    best = max(result.distilled, key=lambda r: r.test_accuracy)
    print(f"teacher: vanilla round {result.teacher_round} ({result.vanilla[result.teacher_round].sparsity:.2%} sparse)")
    for kind, curve in (("vanilla", result.vanilla), ("distilled", result.distilled)):
        dip = find_dip([r.test_accuracy for r in curve])
        print(
            f"{kind}: "
            + (
                "no dip in test accuracy"
                if dip is None
                else f"dip at round {dip[0]} ({curve[dip[0]].sparsity:.2%}), recovers by round {dip[1]}"
            )
        )
    print(
        f"early stopping picks round {picked.round}: sparsity {picked.sparsity:.2%}, test {picked.test_accuracy:.2%} "
        f"(best on the distilled curve: {best.test_accuracy:.2%} at {best.sparsity:.2%})"
    )
    if args.log:
        args.log.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    if args.plot:
        plot_note = plot_curves(result, args.plot)
        print(plot_note or f"plot: {args.plot}")
    out = export_student(
        student,
        dataset,
        args.out,
        name="dsd2-student",
        info={"method": "dsd2", "noise": cfg.noise, "round": picked.round, "sparsity": picked.sparsity},
    )
    for line in out.describe():
        print(line)
    _print_deploy(dense, out, dataset)
    print(f"bundle: {out.path}")
    return 0


def _main_continues_alone() -> bool:
    from distill.distributed import main_continues_alone

    return main_continues_alone()


def run(args: argparse.Namespace) -> int:
    return {"fcpts": _run_fcpts, "dsd2": _run_dsd2, "channels": _run_channels}[args.method](args)
