"""Command line: selfsup train | eval | embed | compare | export | bench | demo | methods (DESIGN.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

STARTED = time.perf_counter()  # the command's wall time counts from here, imports of torch included


def _emit(args: argparse.Namespace, result: dict, for_a_person: str) -> None:
    """A command's result: JSON on stdout with --json or when stdout is a file or pipe (then the person's version goes
    to stderr, unless --json); on a terminal, the person's version only."""
    if args.json or not sys.stdout.isatty():
        print(json.dumps(result))
        if not args.json:
            print(for_a_person, file=sys.stderr)
    else:
        print(for_a_person)


def _cmd_methods(args: argparse.Namespace) -> None:
    from selfsup.commands.methods import methods_table

    print(methods_table())


def _cmd_train(args: argparse.Namespace) -> None:
    from selfsup.train.trainer import fit

    overrides: dict = {"train": {}, "backbone": {}}
    if args.backbone:
        overrides["backbone"]["name"] = args.backbone
    for key in ("epochs", "batch_size", "device"):
        if getattr(args, key) is not None:
            overrides["train"][key] = getattr(args, key)
    if args.compile:
        overrides["train"]["compile"] = True
    from selfsup.run.console import summary_table

    summary = fit(
        args.method, args.data, out_dir=args.out, data_dir=args.data_dir, overrides=overrides,
        assignments=args.set, resume=args.resume, overwrite=args.overwrite, config=args.config,
    )
    _emit(args, summary, summary_table(summary, summary.get("run")))


def _cmd_eval(args: argparse.Namespace) -> None:
    from selfsup.commands.evaluation import evaluate_run
    from selfsup.run.console import scores_table

    results = evaluate_run(args.run, args.protocol, args.labels, args.data, args.data_dir)
    _emit(args, results, scores_table(results, args.run))


def _cmd_compare(args: argparse.Namespace) -> None:
    from selfsup.commands.compare import compare, figure_path

    print(compare(args.runs, args.plot))
    print(f"selfsup: kNN and loss curves in {figure_path(args.plot)}", file=sys.stderr)


def _cmd_export(args: argparse.Namespace) -> None:
    from selfsup.commands.export import export

    result = export(args.run, args.format, args.out)
    _emit(args, result, f"selfsup: wrote {result.get('out', result)}")


def _cmd_embed(args: argparse.Namespace) -> None:
    from selfsup.commands.embed import embed

    shape = embed(args.run, args.data, args.out, split=args.split, data_dir=args.data_dir)
    print(json.dumps({"out": args.out, "split": args.split, "shape": list(shape)}))


def _cmd_bench(args: argparse.Namespace) -> None:
    from selfsup.commands.bench import bench, overhead_sentence

    result = bench(
        args.method, args.backbone, args.batch_size, args.steps, image_size=args.image_size,
        device=args.device, assignments=args.set,
    )
    print(json.dumps(result))
    if args.vs_backbone:
        print(overhead_sentence(args.method, args.backbone, result))


def _cmd_demo(args: argparse.Namespace) -> None:
    from selfsup.commands.demo import demo

    demo(args.out, args.set)


JSON_HELP = "print the result as one JSON line only (the default when stdout is not a terminal)"


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line on stderr with exit code 2, as every other bad input."""

    def error(self, message: str):
        self.exit(2, f"selfsup: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="selfsup", description="Self-supervised representation learning.")
    parser.add_argument("--version", action="version", version=f"selfsup {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("methods", help="list methods with family, paper and year").set_defaults(fn=_cmd_methods)

    train = sub.add_parser("train", help="pre-train an encoder and write a run folder")
    train.add_argument("--config", metavar="RUN/config.yaml", help="rerun a run exactly from its config.yaml")
    train.add_argument("--method", metavar="NAME", help=f"the method to train: {', '.join(_method_names())}")
    train.add_argument("--data", help="digits | cifar10 | cifar100 | stl10 | folder:PATH | ucr:NAME | wav:DIR")
    train.add_argument("--data-dir", help="where named datasets are found or downloaded to (default ~/.cache/selfsup)")
    train.add_argument("--backbone", help="resnet18 | resnet50 | convnet | vit_tiny | vit_small | conv_gru | "
                                           "timm:NAME | torchvision:NAME")
    train.add_argument("--epochs", type=int, help="passes over the data (default: the preset's, e.g. 1000 for SimCLR on CIFAR)")
    train.add_argument("--batch-size", type=int, help="images per step over all processes (default: the preset's, "
                                                       "halved by the recipe on small data)")
    train.add_argument("--out", help="run folder (default: a new runs/METHOD-DATA/version_N)")
    train.add_argument("--device", help="cpu | cuda | auto")
    train.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config.yaml key")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in --out: the files its manifest lists are deleted, and a folder holding "
                            "anything else is refused")
    train.add_argument("--json", action="store_true", help=JSON_HELP)
    train.set_defaults(fn=_cmd_train)

    ev = sub.add_parser("eval", help="kNN, linear probe and/or fine-tuning of a run's encoder")
    ev.add_argument("--run", required=True, help="a run folder written by selfsup train")
    ev.add_argument("--protocol", default="all", help="knn | linear | finetune | all (default; fine-tuning with --labels)")
    ev.add_argument("--labels", help="fine-tuning's labelled subset: 1%%, 10%% or a number of images (class-balanced)")
    ev.add_argument("--data", help="another data SPEC to evaluate on (transfer)")
    ev.add_argument("--data-dir", help="where named datasets are found (default: the run's)")
    ev.add_argument("--json", action="store_true", help=JSON_HELP)
    ev.set_defaults(fn=_cmd_eval)

    cmp = sub.add_parser("compare", help="a markdown table and a figure of finished runs")
    cmp.add_argument("runs", nargs="+", metavar="RUN", help="finished run folders")
    cmp.add_argument("--plot", default="compare.png", help="the figure of kNN and loss curves (default compare.png)")
    cmp.set_defaults(fn=_cmd_compare)

    exp = sub.add_parser(
        "export", help="the encoder as ONNX, TorchScript or a torchvision/timm ResNet state dict, with its preprocessing"
    )
    exp.add_argument("--run", required=True, help="a finished run folder")
    exp.add_argument("--format", required=True,
                     help="onnx | torchscript | torchvision | timm (a ResNet-18/50 state dict at width 64)")
    exp.add_argument("--out", help="file (default RUN/encoder.FORMAT...); its preprocessing goes to FILE.json")
    exp.add_argument("--json", action="store_true", help=JSON_HELP)
    exp.set_defaults(fn=_cmd_export)

    embed = sub.add_parser(
        "embed", help="write a run encoder's features of every image of a dataset, with each row's file and label, "
                      "to one .npz")
    embed.add_argument("--run", required=True, help="a finished run folder")
    embed.add_argument("--data", required=True, help="data SPEC to embed: the run's own, or other data of its kind")
    embed.add_argument("--data-dir", help="where named datasets are found")
    embed.add_argument("--split", default="all", choices=["all", "train", "test", "pretrain"],
                       help="all (default): every image (a folder's train and test, or all its images; other data's "
                            "train then test); test: a folder's held-out images (without train/ and test/ folders: "
                            "those in RUN/eval_split.json)")
    embed.add_argument("--out", required=True, metavar="FILE.npz",
                       help="written exactly (new file, then renamed): features [N, D] float32, paths (each row's file, "
                            "or split/index), labels (-1: none) and classes; np.load(FILE) reads it without pickle. A "
                            "name ending in .npy gets the features alone")
    embed.set_defaults(fn=_cmd_embed)

    bench = sub.add_parser("bench", help="one JSON line: images/s, step and backbone time, overhead")
    bench.add_argument("--method", required=True, metavar="NAME", help=f"one of: {', '.join(_method_names())}")
    bench.add_argument("--backbone", default="resnet18", help="the encoder to time (default resnet18)")
    bench.add_argument("--batch-size", type=int, default=256, help="images per step (default 256)")
    bench.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    bench.add_argument("--image-size", type=int, default=32, help="side of the random images (default 32)")
    bench.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    bench.add_argument("--vs-backbone", action="store_true", help="also print the overhead ratio as a sentence")
    bench.set_defaults(fn=_cmd_bench)

    demo = sub.add_parser("demo", help="SimCLR on digits on CPU in about a minute")
    demo.add_argument("--out", help="run folder (default: a new runs/demo/version_N)")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    demo.set_defaults(fn=_cmd_demo)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("selfsup")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown (not installed)"


def _method_names() -> list[str]:
    from selfsup import methods

    return list(methods.available())


def main(argv: list[str] | None = None) -> int:
    """Run a command; every failure is one line on stderr: exit 2 for input the user can fix, 75 when preempted
    (resume to continue), 1 for anything unforeseen (``SELFSUP_DEBUG=1`` shows its traceback)."""
    from selfsup.run.console import mark_command_start
    from selfsup.run.preemption import REQUEUE_EXIT_CODE, Preempted

    mark_command_start(STARTED)
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except Preempted as preempted:
        print(f"selfsup: {preempted}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    except (ValueError, OSError, FloatingPointError) as error:  # FileNotFoundError, PermissionError are OSErrors
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("selfsup: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, with the way to the traceback
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: internal error: {error.__class__.__name__}: {_one_line(error)} "
              "(run with SELFSUP_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1
    return 0


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    return text or error.__class__.__name__


if __name__ == "__main__":
    sys.exit(main())
