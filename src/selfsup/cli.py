"""Command line: selfsup train | eval | embed | bench | demo | methods (DESIGN.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _cmd_methods(args: argparse.Namespace) -> None:
    from selfsup import methods

    rows = [(name, cls.family, cls.year, cls.paper) for name, cls in methods.available().items()]
    width = max(len(r[0]) for r in rows)
    print(f"{'method':<{width}}  {'family':<13} year  paper")
    for name, family, year, paper in rows:
        print(f"{name:<{width}}  {family:<13} {year}  {paper}")


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
    out = args.out or f"runs/{args.method}-{(args.data or 'resume').replace(':', '_').replace('/', '_')}"
    summary = fit(
        args.method, args.data, out_dir=out, data_dir=args.data_dir, overrides=overrides,
        assignments=args.set, resume=args.resume,
    )
    print(json.dumps(summary))


def _cmd_eval(args: argparse.Namespace) -> None:
    from selfsup.train.evaluation import evaluate_run

    print(json.dumps(evaluate_run(args.run, args.protocol)))


def _cmd_embed(args: argparse.Namespace) -> None:
    from selfsup.train.evaluation import embed

    shape = embed(args.run, args.data, args.out, split=args.split, data_dir=args.data_dir)
    print(json.dumps({"out": args.out, "shape": list(shape)}))


def _cmd_bench(args: argparse.Namespace) -> None:
    from selfsup.train.bench import bench

    result = bench(
        args.method, args.backbone, args.batch_size, args.steps, image_size=args.image_size,
        device=args.device, assignments=args.set,
    )
    print(json.dumps(result))
    if args.vs_backbone:
        print(f"{args.method}: overhead {result['overhead']:.3f} x its own backbone passes on the bare {args.backbone} "
              f"({result['step_ms']:.1f} ms per step vs {result['backbone_ms']:.1f} ms: "
              f"{', '.join(result['backbone_passes'])}); machinery alone {result['machinery_ms']:.1f} ms, "
              f"{result['overhead_from_parts']:.3f} x from the parts; {result['overhead_vs_two_views']:.3f} x one fwd+bwd per view "
              f"({result['two_view_ms']:.1f} ms); {result['device']}, {result['precision']}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from selfsup.train.demo import demo

    demo(args.out, args.set)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description="Self-supervised representation learning.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="list methods with family, paper and year").set_defaults(fn=_cmd_methods)

    train = sub.add_parser("train", help="pre-train an encoder and write a run folder")
    train.add_argument("--method")
    train.add_argument("--data", help="digits | cifar10 | cifar100 | stl10 | folder:PATH | ucr:NAME | wav:DIR")
    train.add_argument("--data-dir", help="where named datasets are found or downloaded to (default ~/.cache/selfsup)")
    train.add_argument("--backbone")
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--out", help="run folder (default runs/METHOD-DATA)")
    train.add_argument("--device", help="cpu | cuda | auto")
    train.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config.yaml key")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    train.set_defaults(fn=_cmd_train)

    ev = sub.add_parser("eval", help="kNN and/or linear probe of a run's encoder")
    ev.add_argument("--run", required=True)
    ev.add_argument("--protocol", choices=["knn", "linear", "all"], default="all")
    ev.set_defaults(fn=_cmd_eval)

    embed = sub.add_parser("embed", help="write a run encoder's features of a dataset to .npy")
    embed.add_argument("--run", required=True)
    embed.add_argument("--data", required=True)
    embed.add_argument("--data-dir")
    embed.add_argument("--split", default="test", choices=["pretrain", "train", "test"])
    embed.add_argument("--out", required=True)
    embed.set_defaults(fn=_cmd_embed)

    bench = sub.add_parser("bench", help="one JSON line: images/s, step and backbone time, overhead")
    bench.add_argument("--method", required=True)
    bench.add_argument("--backbone", default="resnet18")
    bench.add_argument("--batch-size", type=int, default=256)
    bench.add_argument("--steps", type=int, default=5)
    bench.add_argument("--image-size", type=int, default=32)
    bench.add_argument("--device", default="auto")
    bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument("--vs-backbone", action="store_true", help="also print the overhead ratio as a sentence")
    bench.set_defaults(fn=_cmd_bench)

    demo = sub.add_parser("demo", help="SimCLR on digits on CPU in about a minute")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    demo.set_defaults(fn=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, FloatingPointError) as error:
        if os.environ.get("SELFSUP_DEBUG"):
            raise
        print(f"selfsup: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
