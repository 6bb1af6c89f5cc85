"""Issue 3's and issue 12's (CIFAR track) targets, measured: run notebooks 02 and 03 at default settings and
print each target.

    python benchmarks/pruning.py            # default settings (a few minutes per notebook on a CPU)
    python benchmarks/pruning.py --smoke    # SMOKE=True, checks the "smoke" bands instead

Executed copies go to <runs>/benchmarks/; the numbers are what the notebooks record(), checked
against notebooks/bands/<notebook>.json ("full" for default runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import papermill as pm

from mokit.data import runs_root
from mokit.results import check_bands, load_bands, load_results

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# (notebook, what is printed, how the figure is computed from the recorded numbers, target)
TARGETS = [
    ("02_pruning", "LeNet-300-100 kept fraction", lambda r: r["kept_fraction"], "<= 0.08"),
    ("02_pruning", "LeNet-300-100 dense -> pruned acc %", lambda r: f"{r['dense_acc']:.2f} -> {r['pruned_acc']:.2f}",
     ">= dense - 0.2 and >= 98.0"),
    ("02_pruning", "  (before fine-tuning) %", lambda r: r["pruned_acc_no_finetune"], ""),
    ("02_pruning", "LeNet-5 at 8%: acc %", lambda r: r["lenet5_pruned_acc"], ">= 98.9"),
    ("02_pruning", "gradual - one-shot (points)", lambda r: f"{r['gradual_acc']:.2f} - {r['oneshot_acc']:.2f} "
     f"at sparsity {r['schedule_sparsity']}", "> 0 at >= 0.9"),
    ("02_pruning", "ticket - random re-init (points)", lambda r: f"{r['ticket_acc']:.2f} - {r['reinit_acc']:.2f} "
     f"at kept {r['ticket_kept_fraction']:.2f}", ">= 0.5 at <= 0.11"),
    ("02_pruning", "zipped size, 8% / dense", lambda r: r["zipped_size_ratio"], "<= 0.25"),
    ("02_pruning", "CIFAR net dense -> pruned acc % (one view)", lambda r: f"{r['cifar_dense_acc']:.2f} -> "
     f"{r['cifar_pruned_acc']:.2f} at sparsity {r['cifar_sparsity']:.3f}", "fine-tuned, sparsities from the scan"),
    ("02_pruning", "CIFAR net: scan's allocation - uniform", lambda r: f"{r['cifar_pruned_acc']:.2f} - "
     f"{r['cifar_uniform_acc']:.2f} = {r['cifar_scan_vs_uniform']:+.2f}", "> 0 points"),
    ("03_structured_pruning", "half the conv channels: speedup", lambda r: r["structured_speedup"],
     ">= 1.6 at batch 256"),
    ("03_structured_pruning", "  MACs ratio", lambda r: r["macs_ratio"], "about 0.5 (see notes)"),
    ("03_structured_pruning", "unstructured, same sparsity: speedup", lambda r: r["unstructured_speedup"], "~1.0"),
    ("03_structured_pruning", "structured accuracy drop (points)", lambda r: r["structured_acc_drop"], "small"),
    ("03_structured_pruning", "CIFAR net channels: speedup", lambda r: r["cifar_channel_speedup"],
     ">= 1.5 at batch 256"),
    ("03_structured_pruning", "CIFAR net channels: points lost", lambda r: r["cifar_channel_drop"], "<= 1.5"),
    ("03_structured_pruning", "CIFAR net channels: MACs ratio", lambda r: r["cifar_macs_ratio"],
     "(measured, not a target)"),
    ("03_structured_pruning", "growing: max output difference", lambda r: r["grow_max_output_diff"], "<= 1e-5"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])    # the first paragraph
    parser.add_argument("--smoke", action="store_true", help="run with SMOKE=True")
    args = parser.parse_args()
    out = runs_root() / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    kind, seconds = ("smoke" if args.smoke else "full"), {}
    for name in dict.fromkeys(t[0] for t in TARGETS):
        start = time.perf_counter()
        pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out / f"{name}.ipynb"),
                            parameters={"SMOKE": args.smoke}, cwd=str(NOTEBOOKS), progress_bar=False)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s ({kind} settings)", flush=True)
    for name, label, figure, target in TARGETS:
        value = figure(load_results(name))
        print(f"{name:22s} {label:38s} {value if isinstance(value, str) else f'{value:.4g}':>30s}   target {target}")
    for name in seconds:
        problems = check_bands(load_results(name), load_bands(name, kind))
        print(f"{name}: {'all ' + kind + ' bands hold' if not problems else '; '.join(problems)}")


if __name__ == "__main__":
    main()
