"""The seed spread behind the margins of tests/test_learning.py: every method and every mutation, on each seed.

    python benchmarks/learn_seeds.py [--methods simclr,byol|all] [--seeds 0-4] [--jobs 2] [--out FILE.jsonl]

Each run is the test's own ``train`` (digits, its settings, one thread); a mutation is the test's context
manager, those it asserts (``MUTATIONS``) and those digits cannot tell (``NOT_MEASURABLE_ON_DIGITS``). Results
are appended to ``--out`` as JSON lines, and runs already there are not repeated, so a stopped measurement
resumes. The table gives, per method, the real run's kNN on every seed and, per mutation, what the test reads
(``MUTANT_MARGINS``: kNN unless it names a monitor) and its loss below the real run of the same seed; the
smallest loss is what the mutation's margin must stay under, and the lowest real kNN what the bar must.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Job = tuple[str, str, int]  # method, mutation ("" for the real method), seed


def mutations_of(method: str) -> dict:
    """The test's asserted mutations of ``method`` and those measured only (``NOT_MEASURABLE_ON_DIGITS``)."""
    from tests import test_learning as learning

    return {**learning.MUTATIONS.get(method, {}), **learning.NOT_MEASURABLE_ON_DIGITS.get(method, {})}


def run(job: Job) -> dict:
    import torch

    torch.set_num_threads(1)
    from tests import test_learning as learning

    method, mutation, seed = job
    with tempfile.TemporaryDirectory() as out, mutations_of(method)[mutation]() if mutation else nullcontext():
        knn, last = learning.train(method, Path(out), seed)
    return {"method": method, "mutation": mutation, "seed": seed, "knn": knn,
            "effective_rank": last.get("effective_rank"), "z_std_ratio": last.get("z_std_ratio")}


def seeds_of(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def table(rows: list[dict]) -> str:
    """Per method and mutation: the value the test reads on each seed and the mutant's loss below the real run."""
    from tests.test_learning import MUTANT_MARGINS

    by_run = {(r["method"], r["mutation"], r["seed"]): r for r in rows}
    lines = ["| method | mutation | read | value by seed | loss below the real run by seed | smallest loss |",
             "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        for mutation in dict.fromkeys(r["mutation"] for r in rows if r["method"] == method):
            read = MUTANT_MARGINS.get((method, mutation), ("knn", None))[0]
            seeds = sorted(s for (m, u, s) in by_run if m == method and u == mutation)
            values = " ".join(f"{by_run[method, mutation, s][read]:.3f}" for s in seeds)
            losses = [by_run[method, "", s][read] - by_run[method, mutation, s][read]
                      for s in seeds if mutation and (method, "", s) in by_run]
            shown = " ".join(f"{g:+.3f}" for g in losses)
            smallest = f"{min(losses):.3f}" if losses else ""
            lines.append(f"| {method} | {mutation or '(real)'} | {read} | {values} | {shown} | {smallest} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all")
    parser.add_argument("--seeds", default="0-4", help="FIRST-LAST")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each")
    parser.add_argument("--out", default=str(REPO / "runs" / "learn_seeds.jsonl"))
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tests import test_learning as learning

    methods = list(learning.MUTATIONS) if args.methods == "all" else args.methods.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    seen = {(r["method"], r["mutation"], r["seed"]) for r in done}
    jobs = [(m, u, s) for s in seeds_of(args.seeds) for m in methods for u in ["", *mutations_of(m)]
            if (m, u, s) not in seen]
    with ProcessPoolExecutor(args.jobs) as pool, out.open("a") as sink:
        for row in pool.map(run, jobs):
            print(json.dumps(row), file=sink, flush=True)
            print(row, flush=True)
            done.append(row)
    print(table([r for r in done if r["method"] in methods]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
