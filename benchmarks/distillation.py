"""Run notebooks 05 and 06 at their default settings and print issue 5's targets.

    MOKIT_DATA=/work/shared/data .venv/bin/python benchmarks/distillation.py [05|06 ...]

Each notebook is executed by papermill into runs/ (MOKIT_RUNS); its recorded numbers are then
checked against its "full" bands. Wall-clock seconds are printed (the budget is 5 minutes each
on a 2-core CPU; they are noisy on a shared machine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import papermill as pm

from mokit.data import runs_root
from mokit.results import check_bands, load_bands, load_results

NOTEBOOKS = {"05": "05_distillation", "06": "06_ensembles_and_transfer"}
TARGETS = {
    "05_distillation": lambda r: [
        f"teacher {r['teacher_acc']:.2f}%; student errors scratch {r['student_scratch_errors']:.1f} "
        f"± {r['student_scratch_errors_std']:.1f}, "
        f"distilled {r['student_kd_errors']:.1f} ± {r['student_kd_errors_std']:.1f} "
        f"over {r['seeds']} seeds -> ratio {r['kd_error_ratio']:.3f} (target <= 0.85)",
        f"best temperature {r['best_temperature']}; hint student {r['hint_errors']} errors; omitted digit "
        f"{r['omitted_digit']}: {r['omitted_digit_acc_before']:.1f}% -> "
        f"{r['omitted_digit_recovered_acc']:.1f}% after the bias fix",
        f"CIFAR: teacher {r['cifar_teacher_acc']:.2f}%, student {r['cifar_shrink']:.1f}x smaller, "
        f"{r['cifar_epochs']} epochs on {r['cifar_transfer_size']} images: "
        f"scratch {r['cifar_scratch_acc']:.2f}%, distilled {r['cifar_kd_acc']:.2f}% -> gain "
        f"{r['cifar_kd_gain']:+.2f} ± {r['cifar_kd_gain_std']:.2f} points "
        f"over {r['cifar_seeds']} seeds ({r['cifar_seconds']:.0f} s)"],
    "06_ensembles_and_transfer": lambda r: [
        f"best single {r['best_single_acc']:.2f}%, ensemble of {len(r['member_acc'])} {r['ensemble_acc']:.2f}% "
        f"-> {r['ensemble_gain']:+.2f} points (target >= 0.2 on MNIST)",
        f"greedy soup {r['soup_acc']:.2f}%, uniform soup {r['uniform_soup_acc']:.2f}%, "
        f"ensemble -> student {r['ensemble_student_acc']:.2f}%",
        f"1,000 Fashion-MNIST labels: transfer {r['transfer_acc_1k']:.2f}%, scratch {r['scratch_acc_1k']:.2f}%, "
        f"frozen {r['frozen_acc_1k']:.2f}% -> {r['transfer_gain_1k']:+.2f} points (target >= 2)"],
}


def main(which: list[str]) -> None:
    root = Path(__file__).resolve().parent.parent / "notebooks"
    for key in which or list(NOTEBOOKS):
        name = NOTEBOOKS[key]
        start = time.perf_counter()
        pm.execute_notebook(str(root / f"{name}.ipynb"), str(runs_root() / f"{name}.ipynb"),
                            cwd=str(root), kernel_name="python3", progress_bar=False)
        seconds = time.perf_counter() - start
        results = load_results(name)
        print(f"== {name}: {seconds:.0f} s wall (budget 300 s), real data: {results['real_data']}")
        for line in TARGETS[name](results):
            print("  ", line)
        problems = check_bands(results, load_bands(name, "full"))
        print("   full bands:", "all hold" if not problems else "; ".join(problems), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
