"""Warm a machine for a workshop: `make workshop` (or `python -m mokit.workshop [--datasets ...]`).

1. decodes every dataset the course reads into the cache (the first load of CIFAR-10 decodes 60,000
   JPEGs; later loads read one tensor file);
2. trains every baseline recipe (`zoo.RECIPES`) on its own dataset, and LeNet-300-100 / LeNet-5 on
   each extra dataset named with --datasets (the notebooks' `DATASET` knob), and caches the
   checkpoints, so no notebook trains a baseline in class;
3. writes the student copies (student/, what `make student-lab` opens).

Run it on each learner's machine (or once, then copy data/ and student/): a checkpoint's name hashes
its precision, which `precision="auto"` resolves per CPU, so a cache made on a CPU with bf16 is
not used on one without it. Everything already cached is loaded, not trained again.
"""

from __future__ import annotations

import argparse
import sys
import time

from . import student
from .data import list_datasets, load_dataset
from .zoo import RECIPES, baseline

FOLLOW_DATASET = ("lenet300", "lenet5")     # the baselines the notebooks train on whatever DATASET is


def plan(datasets: list[str]) -> list[tuple[str, str]]:
    """(recipe, dataset) pairs to warm: each recipe on its own dataset, then FOLLOW_DATASET on the rest."""
    valid = list_datasets()
    for name in datasets:
        if name not in valid:
            raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(valid)}")
    pairs = [(name, recipe["dataset"]) for name, recipe in RECIPES.items()]
    pairs += [(name, d) for d in datasets for name in FOLLOW_DATASET if (name, d) not in pairs]
    return pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="*", default=[], metavar="NAME",
                    help=f"extra datasets the class will set DATASET to (of: {', '.join(list_datasets())})")
    ap.add_argument("--smoke", action="store_true",
                    help="the tests' tiny settings (checks the command, warms nothing real)")
    ap.add_argument("--no-student", action="store_true", help="skip writing the student copies")
    ap.add_argument("--student-out", default=None, help="where the student copies go (default: student/)")
    args = ap.parse_args(argv)
    try:
        pairs = plan(args.datasets)
    except ValueError as e:
        print(f"✗ {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    for name in sorted({d for _, d in pairs}):
        for split in ("train", "test"):
            t = time.perf_counter()
            data = load_dataset(name, split, subset=1000 if args.smoke else None)
            print(f"data     {name:14s} {split:5s} {len(data):6,d} images{'' if data.real else ' (stand-in)'}  "
                  f"{time.perf_counter() - t:6.1f} s")
    for name, dataset in pairs:
        t = time.perf_counter()
        _, info = baseline(name, dataset=dataset, smoke=args.smoke, progress=not args.smoke)
        how = "loaded" if info["loaded"] else "trained"
        print(f"baseline {name:10s} on {dataset:14s} {how:7s} test accuracy {info['test_acc']:6.2f}%  "
              f"{time.perf_counter() - t:6.1f} s")
    status = 0 if args.no_student else student.main(["--out", args.student_out] if args.student_out else [])
    print(f"workshop ready in {time.perf_counter() - t0:.0f} s: checkpoints cached"
          + ("" if args.no_student else ", student copies in student/ (open them with `make student-lab`)"))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
