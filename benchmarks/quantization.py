"""Issues 4 and 12's targets at default settings: real int8 (accuracy, file size, speed) and notebook 04.

    MOKIT_DATA=/work/shared/data .venv/bin/python benchmarks/quantization.py [--rounds 3] [--no-notebook]

1. For LeNet-300-100 and LeNet-5 (the notebook-00 baselines): static int8 through torch.ao's x86
   backend, calibrated on real training batches; accuracy, saved-file ratio, and latency of fp32
   vs int8 measured back to back in `rounds` interleaved rounds (median of the per-round ratios),
   at batch 1 and 256 with 1 and 2 threads. For LeNet-300-100 also dynamic int8, the alternative.
   torchao is not installed: measured earlier on this CPU its int8 path without torch.compile was
   slower than float32, so mokit uses torch.ao's kernels (see mokit/quantize.py).
   For the fast CIFAR net (issue 12): eager mode refuses it (global max-pool, logit scale), so FX graph
   mode (torch.ao, x86); int8 against channels_last fp32 (its fastest layout) and contiguous fp32.
2. Runs notebooks 04_quantization and 04b_low_bits at their default settings with papermill (timed) and
   checks every recorded number against the "full" bands (the issue's targets).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mokit import quantize as Q
from mokit.metrics import measure_latency
from mokit.results import check_bands, load_bands, load_results
from mokit.train import evaluate
from mokit.zoo import baseline

ROOT = Path(__file__).resolve().parent.parent


def int8_figures(rounds: int) -> None:
    folder = Path(tempfile.mkdtemp())
    for name in ("lenet300", "lenet5"):
        model, info = baseline(name, device="cpu", progress=False)
        train_data, test_data = info["train"], info["test"]
        int8 = Q.quantize_int8(model, train_data)
        variants = {"static int8": int8}
        if name == "lenet300":
            variants["dynamic int8"] = Q.dynamic_int8(model)
        size = Q.save_int8(int8, folder / f"{name}.pt")
        reloaded = Q.load_int8(model, folder / f"{name}.pt")
        fp32_acc, int8_acc = info["test_acc"], evaluate(reloaded, test_data)["accuracy"]
        print(f"\n== {name}: fp32 {fp32_acc:.2f}%  int8 (reloaded) {int8_acc:.2f}%  "
              f"drop {fp32_acc - int8_acc:+.2f} points  file {size:,} B / {Q.file_bytes(model):,} B "
              f"= {size / Q.file_bytes(model):.3f}x")
        for batch in (1, 256):
            for threads in (1, 2):
                ratios: dict[str, list[float]] = {k: [] for k in variants}
                for _ in range(rounds):                    # interleaved: both see the same load
                    kw = dict(batch_size=batch, threads=threads, repeats=30 if batch > 1 else 200)
                    f = measure_latency(model, test_data.shape, **kw)["ms"]
                    for k, v in variants.items():
                        ratios[k].append(f / measure_latency(v, test_data.shape, **kw)["ms"])
                text = ", ".join(f"{k} {statistics.median(r):.2f}x (rounds {', '.join(f'{x:.2f}' for x in r)})"
                                 for k, r in ratios.items())
                print(f"   batch {batch:>3}, {threads} thread(s): fp32 {f:.3f} ms (last round); speedup {text}")


def cifar_figures(rounds: int) -> None:
    """Issue 12: real int8 of the fast CIFAR net, >= 2x at batch 256 with <= 0.5 points lost."""
    import copy

    model, info = baseline("cifar_net", device="cpu", progress=False)
    train_data, test_data, tta = info["train"], info["test"], info["tta"]
    try:
        Q.quantize_int8(model, train_data, num_batches=1)
        print("\n== cifar_net: eager-mode int8 accepted the net")
    except TypeError as e:
        print(f"\n== cifar_net: eager-mode int8 refuses it ({e}); using FX graph mode")
    int8 = Q.quantize_int8_fx(model, train_data)
    int8_acc = evaluate(int8, test_data, tta=tta)["accuracy"]
    print(f"   fp32 {info['test_acc']:.2f}%  FX int8 {int8_acc:.2f}% (TTA {tta})  "
          f"drop {info['test_acc'] - int8_acc:+.2f} points (target <= 0.5)  "
          f"file {Q.file_bytes(int8) / Q.file_bytes(model):.3f}x")
    fp32_cl = Q.ChannelsLastInput(copy.deepcopy(model).to(memory_format=torch.channels_last))
    for threads in (1, 2):
        kw = dict(batch_size=256, threads=threads, repeats=10)
        rows = [(measure_latency(model, test_data.shape, **kw)["ms"],
                 measure_latency(fp32_cl, test_data.shape, **kw)["ms"],
                 measure_latency(int8, test_data.shape, **kw)["ms"]) for _ in range(rounds)]
        vs_cl = statistics.median(c / i for _, c, i in rows)
        vs_plain = statistics.median(f / i for f, _, i in rows)
        print(f"   batch 256, {threads} thread(s): int8 {statistics.median(i for *_, i in rows):.0f} ms; speedup over "
              f"channels_last fp32 {vs_cl:.2f}x (target >= 2), over contiguous fp32 {vs_plain:.2f}x")


def notebook_figures() -> None:
    import papermill as pm

    for stem in ("04_quantization", "04b_low_bits"):
        src = ROOT / "notebooks" / f"{stem}.ipynb"
        out = Path(tempfile.mkdtemp()) / src.name
        start = time.perf_counter()
        pm.execute_notebook(str(src), str(out), cwd=str(src.parent), kernel_name="python3", progress_bar=False)
        seconds = time.perf_counter() - start
        results = load_results(stem)
        print(f"\n== notebook {stem} at default settings: {seconds:.0f} s (executed copy: {out})")
        for key in sorted(results):
            print(f"   {key}: {results[key]}")
        problems = check_bands(results, load_bands(stem, "full"))
        print("   full bands: " + ("all hold" if not problems else "; ".join(problems)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved latency rounds per setting")
    parser.add_argument("--no-notebook", action="store_true", help="only the int8 measurements")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, engine {Q.ENGINE}, "
          f"engines {torch.backends.quantized.supported_engines}")
    int8_figures(args.rounds)
    cifar_figures(args.rounds)
    if not args.no_notebook:
        notebook_figures()


if __name__ == "__main__":
    main()
