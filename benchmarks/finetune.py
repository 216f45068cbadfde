"""Semi-supervised fine-tuning: a run's pre-trained encoder against the same fine-tuning from a random init.

    python benchmarks/finetune.py --run RUN --labels 1% [--labels 100 ...] [--data SPEC] [--data-dir DIR]
        [--threads 1]

For each ``--labels``, ``selfsup eval --protocol finetune`` on the run (the SimCLR Appendix B.5 recipe
adapted to the subset, ``selfsup/evaluate/finetune.py``; the subset and result go to ``RUN/eval``), then
the same recipe, subset and seed from a random initialisation (the backbone built after seeding with the
run's seed; its subset and result go to ``RUN/eval/random-init/eval``). Prints one
markdown row per fraction: the two top-1s, their difference, and both wall times, measured in one process.
With ``--data`` the run's encoder is fine-tuned and scored on another dataset (transfer).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from selfsup.commands.evaluation import evaluation_data, load_run
from selfsup.commands.finetuning import finetune
from selfsup.nn.backbones import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--labels", action="append", required=True)
    parser.add_argument("--data", default=None, help="another data SPEC (transfer); default: the run's own")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg, encoder, trained_on = load_run(args.run)
    spec = args.data or cfg["data"]["spec"]
    train, test, _ = evaluation_data(cfg, trained_on, args.data, args.data_dir)
    device = torch.device("cpu")
    print(f"{args.run} ({cfg['method']}, {cfg['backbone']['name']} w{cfg['backbone'].get('width')}) fine-tuned on "
          f"{spec}: {len(train)} train / {len(test)} test images, {args.threads} thread(s)\n")
    print("| data | labels | labelled images | steps | pre-trained top-1 | random init top-1 | difference "
          "| pre-trained wall s | random init wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for labels in args.labels:
        start = time.perf_counter()
        trained = finetune(args.run, cfg, encoder, train, test, labels, device)
        trained_s = time.perf_counter() - start
        torch.manual_seed(cfg["train"]["seed"])
        scratch = build_backbone(cfg["backbone"], train.channels, train.input_size)
        start = time.perf_counter()
        baseline = finetune(args.run / "eval" / "random-init", cfg, scratch, train, test, labels, device)
        scratch_s = time.perf_counter() - start
        print(f"| {spec} | {labels} | {trained['labelled_images']} | {trained['steps']} | {trained['top1']:.3f} | "
              f"{baseline['top1']:.3f} | {trained['top1'] - baseline['top1']:+.3f} | {trained_s:.0f} | {scratch_s:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
