"""The seed spread behind the margins of tests/test_learning.py: every method and every mutation, on each seed.

    python benchmarks/learn_seeds.py [--methods simclr,byol|all] [--seeds 0-4] [--jobs 2] [--out FILE.jsonl]

Each run is the test's own ``train`` (digits, its settings, one thread); a mutation is the test's context
manager, those it asserts (``MUTATIONS``) and those digits cannot tell (``NOT_MEASURABLE_ON_DIGITS``). Results are appended to ``--out`` as JSON lines, and runs already there are not repeated, so a
stopped measurement resumes. The table gives, per method, the real run's kNN on every seed and, per
mutation, its kNN and its gap below the real run of the same seed; the smallest gap is what ``MUTANT_GAP``
must stay under, and the lowest real score what the bar must stay under.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
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
    with tempfile.TemporaryDirectory() as out:
        if mutation:
            with mutations_of(method)[mutation]():
                knn, last = learning.train(method, Path(out), seed)
        else:
            knn, last = learning.train(method, Path(out), seed)
    return {"method": method, "mutation": mutation, "seed": seed, "knn": knn,
            "effective_rank": last.get("effective_rank"), "z_std_ratio": last.get("z_std_ratio")}


def seeds_of(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def table(rows: list[dict]) -> str:
    knn = {(r["method"], r["mutation"], r["seed"]): r["knn"] for r in rows}
    lines = ["| method | mutation | kNN by seed | gap below the real run by seed | smallest gap |", "|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        for mutation in dict.fromkeys(r["mutation"] for r in rows if r["method"] == method):
            seeds = sorted(s for (m, u, s) in knn if m == method and u == mutation)
            scores = " ".join(f"{knn[method, mutation, s]:.3f}" for s in seeds)
            gaps = [knn[method, "", s] - knn[method, mutation, s] for s in seeds if mutation and (method, "", s) in knn]
            lines.append(f"| {method} | {mutation or '(real)'} | {scores} | {' '.join(f'{g:+.3f}' for g in gaps)} | "
                         f"{min(gaps):.3f} |" if gaps else f"| {method} | {mutation or '(real)'} | {scores} | | |")
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
