"""Does every notebook's core path run on a GPU, and how fast is CIFAR-10 there? (issue 12, section 4)

One script, no papermill, no optuna / tqdm / jupyter / fastapi: it needs only torch, torchvision,
numpy (+ onnx, onnxruntime for the export check, skipped without them), so it runs on a bare GPU
machine that only has the working tree. Each check prints one line, `ok`, `FAILED` or `skipped`,
with its figures; the exit status is 1 if any check FAILED.

    data                 MNIST and CIFAR-10 loaded (real or stand-in), decode seconds
    pack decode          <data root>/cifar10.pack decoded on the device (nvJPEG) vs on the CPU (the default)
    lenet5 mnist         RECIPES["lenet5"]: test accuracy, seconds to train      (00)
    cifar recipe         the GPU-sized CIFAR recipe below, over --seeds seeds    (00, 01)
    cifar target         >= 94% test accuracy in <= 10 s of training (an H100/H200; airbench94: 94.0%
                         in 2.59 s on an A100); only judged in a full run on real data
    throughput fp32/bf16 training images/s of the same net and batch in each precision
    magnitude pruning    global magnitude pruning of the CIFAR net + masked fine-tuning   (02)
    channel pruning      channels removed for real: params, latency at batch 256, fine-tuned (03)
    int8                 x86 int8 (torch.ao, fbgemm): CPU-only kernels, so it runs on the CPU  (04)
    distillation         a >= 4x smaller student from the CIFAR net's cached logits vs scratch (05)
    ensemble             the two students' averaged probabilities                           (06)
    search trial         search.train_objective, one trial, no optuna                       (07)
    nas trial            nas.arch_objective on a sampled conv architecture                  (08)
    export               ONNX (+ ONNX Runtime on the CPU) and torch.export, outputs compared (10)
Notebook 09 (parallel.py: worker processes, DDP) is not exercised here.

The GPU CIFAR recipe: RECIPES["cifar_net"] (whitening init, Nesterov SGD with 64x bias lr, triangle
schedule, label smoothing 0.2, flip + translate, lookahead, flip/translate TTA) on a wider cifar_net,
widths (64, 256, 256) and 10 epochs as in airbench94, batch 1024 with the lr scaled linearly (x batch / the
recipe's batch), bf16. --epochs, --batch-size, --lr, --widths, --precision change it for a quick variant.

Making the data that travels (the CIFAR-10 tree does not, 236 MB on disk; its pack is 17.5 MiB):

    python -m mokit.data pack ../shared/data/cifar10 data/gpu/cifar10.pack
    mkdir -p data/gpu/MNIST && cp -r ../shared/data/MNIST/raw data/gpu/MNIST/      # 11 MiB of .gz

The device run (data/ is git-ignored, so data/gpu travels only through `carry`; 29 MiB in all):

    run(command="MOKIT_DATA=data/gpu python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json",
        carry=["data/gpu"], timeout_s=600)

On an H200 it should take 2-4 minutes (an estimate: it has not run on a GPU yet). Here, on the CPU, a
quick run checks the code path in under a minute (57 s measured on 2 busy cores; tests/test_gpu_check.py):

    MOKIT_STANDIN=1 .venv/bin/python benchmarks/gpu_check.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))    # mokit from this tree, installed or not

import torch

from mokit import data as mdata
from mokit import distill, ensemble, metrics, nas, prune, quantize, search
from mokit.models import create_model
from mokit.train import (
    evaluate,
    pick_device,
    resolve_precision,
    seed_everything,
    train,
)
from mokit.zoo import INITS, RECIPES, recipe_train_kw

TARGET_ACC, TARGET_SECONDS = 94.0, 10.0
GPU_WIDTHS = (64, 256, 256)
# an H200 sweep (3 seeds each, batch 1024): 10 epochs 89.4%, 16 90.4%, 24 90.7% in 6.9 s, 32 90.8% in 9.4 s
GPU_EPOCHS = 24
QUICK_WIDTHS = (16, 32, 32)


# ---------------------------------------------------------------------------------------------
# Checks: each returns (status, figures); a raised exception is a FAILED check with its message
# ---------------------------------------------------------------------------------------------

class Checks:
    def __init__(self):
        self.rows: list[dict] = []

    def run(self, name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        try:
            status, text, value = fn(*args, **kw)
        except Exception as e:  # a broken path is a FAILED line, the other checks still run
            traceback.print_exc()
            status, text, value = "FAILED", f"{type(e).__name__}: {e}", None
        seconds = time.perf_counter() - t0
        self.rows.append({"check": name, "status": status, "text": text, "seconds": seconds})
        print(f"{status:<8}{name:<22}{text}   [{seconds:.1f} s]", flush=True)
        return value

    @property
    def failed(self) -> list[str]:
        return [r["check"] for r in self.rows if r["status"] == "FAILED"]


def verdict(good: bool) -> str:
    return "ok" if good else "FAILED"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------

def check_data(args, device):
    t0 = time.perf_counter()
    n = (2048, 512, 1024, 512) if args.quick else (None, None, None, None)
    sets = {
        "mnist": (mdata.load_dataset("mnist", "train", subset=n[0], device=device),
                  mdata.load_dataset("mnist", "test", subset=n[1], device=device)),
        "cifar10": (mdata.load_dataset("cifar10", "train", subset=n[2], device=device),
                    mdata.load_dataset("cifar10", "test", subset=n[3], device=device)),
    }
    seconds = time.perf_counter() - t0
    real = all(d.real for pair in sets.values() for d in pair)
    shapes_ok = sets["mnist"][0].shape == (1, 28, 28) and sets["cifar10"][0].shape == (3, 32, 32)
    sizes = ", ".join(f"{k} {len(a)}/{len(b)} {'real' if a.real and b.real else 'STAND-IN'}"
                      for k, (a, b) in sets.items())
    need_real = not args.quick and os.environ.get("MOKIT_STANDIN") != "1"
    good = shapes_ok and (real or not need_real)
    return verdict(good), f"{sizes}; loaded in {seconds:.1f} s (data root {mdata.data_root()})", (sets, real)


def check_pack(device):
    """Figures for nvJPEG against libjpeg; the verdict: the default decoder (the CPU's) is the one used."""
    path = mdata.data_root() / mdata.PACK_NAME
    if not path.is_file():
        return "skipped", f"no {path}", None
    t0 = time.perf_counter()
    _, splits = mdata.read_pack(path)
    files = splits["test"][0][:5000]
    read_s = time.perf_counter() - t0
    timings = {}
    for dev in dict.fromkeys([device, torch.device("cpu")]):
        sync(dev)
        t0 = time.perf_counter()
        timings[dev.type] = (mdata.decode_jpegs(files, (3, 32, 32), device=dev, where=str(path)),)
        sync(dev)
        timings[dev.type] += (time.perf_counter() - t0,)
    here, cpu = timings[device.type][0], timings["cpu"][0]
    default = mdata.decode_jpegs(files, (3, 32, 32), where=str(path))
    diff = (here.int() - cpu.int()).abs()
    per_s = ", ".join(f"{k} {len(files) / s:,.0f} images/s" for k, (_, s) in timings.items())
    text = (f"{len(files)} test JPEGs, read {read_s:.2f} s; decode {per_s}; {device.type} vs cpu: "
            f"max |diff| {int(diff.max())}, mean {diff.float().mean():.3f}, {100 * (diff > 0).float().mean():.2f}% "
            f"of values differ; the default decoder is the CPU's: "
            f"{'identical' if torch.equal(default, cpu) else 'NOT identical'} to it")
    return verdict(torch.equal(default, cpu)), text, None


def fresh_cifar(train_data, widths, seed):
    seed_everything(seed)
    model = create_model("cifar_net", widths=widths)
    INITS[RECIPES["cifar_net"]["init"]](model, train_data)
    return model


def cifar_kw(args, device) -> dict:
    """RECIPES["cifar_net"] scaled to --batch-size (lr linearly), at --precision, for --epochs."""
    base = recipe_train_kw("cifar_net")
    kw = {**base, "batch_size": args.batch_size, "lr": args.lr or base["lr"] * args.batch_size / base["batch_size"],
          "epochs": args.epochs, "precision": resolve_precision(args.precision, device)}
    return kw


def timed_train(model, train_data, device, seed=0, **kw) -> float:
    sync(device)
    t0 = time.perf_counter()
    train(model, train_data, seed=seed, device=device, progress=False, **kw)
    sync(device)
    return time.perf_counter() - t0


def check_lenet5(mnist, device, quick):
    train_data, test_data = mnist
    recipe = recipe_train_kw("lenet5")
    if quick:
        recipe["epochs"] = 1
    seed_everything(0)
    model = create_model("lenet5")
    seconds = timed_train(model, train_data, device, **recipe)
    acc = evaluate(model, test_data)["accuracy"]
    need = 98.5 if train_data.real and not quick else 30.0
    text = f"{acc:.2f}% test accuracy (need >= {need}), {seconds:.1f} s to train {recipe['epochs']} epochs"
    return verdict(acc >= need), text, (model, acc)


def check_cifar(args, cifar, device):
    train_data, test_data = cifar
    kw = cifar_kw(args, device)
    # warm-up: two throwaway epochs on the full set autotune every kernel and shape (one was not enough)
    if not args.quick:
        timed_train(fresh_cifar(train_data, args.widths, 99), train_data, device, **{**kw, "epochs": 2})
    runs = []
    for seed in range(args.seeds):
        sync(device)
        t0 = time.perf_counter()
        model = fresh_cifar(train_data, args.widths, seed)              # whitening init counts as training
        model.to(device)
        timed_train(model, train_data, device, seed=seed, **kw)
        seconds = time.perf_counter() - t0
        acc = evaluate(model, test_data, tta=RECIPES["cifar_net"]["tta"])["accuracy"]
        runs.append({"seed": seed, "acc": acc, "seconds": seconds, "model": model})
        print(f"        seed {seed}: {acc:.2f}% in {seconds:.2f} s", flush=True)
    accs, secs = [r["acc"] for r in runs], [r["seconds"] for r in runs]

    def sd(v):
        return statistics.stdev(v) if len(v) > 1 else 0.0
    summary = {"acc": statistics.mean(accs), "acc_std": sd(accs), "seconds": statistics.mean(secs),
               "seconds_std": sd(secs), "images_per_s": kw["epochs"] * len(train_data) / statistics.mean(secs),
               "params": metrics.count_params(runs[0]["model"]), "kw": kw, "widths": list(args.widths)}
    need = 90.0 if train_data.real and not args.quick else 0.0     # quick: a few steps, the code path only
    text = (f"{summary['acc']:.2f} ± {summary['acc_std']:.2f}% test accuracy (flip/translate TTA), "
            f"{summary['seconds']:.2f} ± {summary['seconds_std']:.2f} s to train, "
            f"{summary['images_per_s']:,.0f} images/s; widths {tuple(args.widths)} "
            f"({summary['params']:,} params), batch {kw['batch_size']}, lr {kw['lr']:g}, {kw['epochs']} epochs, "
            f"{kw['precision']}, {args.seeds} seed(s)   (need >= {need}%)")
    return verdict(summary["acc"] >= need), text, (runs[0]["model"], summary)


def check_target(summary, real, quick, device):
    text = (f"{summary['acc']:.2f}% in {summary['seconds']:.2f} s; target >= {TARGET_ACC}% in "
            f"<= {TARGET_SECONDS} s on an H100/H200")
    if quick or not real or device.type != "cuda":
        return "skipped", text + " (judged only in a full run on real data on a GPU)", None
    return verdict(summary["acc"] >= TARGET_ACC and summary["seconds"] <= TARGET_SECONDS), text, None


def check_throughput(args, cifar, device, precision):
    """Training images/s of the GPU-sized net for one epoch (after one warm-up epoch) in `precision`."""
    train_data = cifar[0].take(slice(0, 512)) if args.quick else cifar[0]
    try:
        precision = resolve_precision(precision, device)
    except ValueError as e:
        return "skipped", str(e), None
    kw = {**cifar_kw(args, device), "epochs": 1, "precision": precision}
    timed_train(fresh_cifar(train_data, args.widths, 0), train_data, device, **kw)     # warm-up
    seconds = timed_train(fresh_cifar(train_data, args.widths, 0), train_data, device, **kw)
    ips = len(train_data) / seconds
    return (verdict(finite(ips) and ips > 0),
            f"{ips:,.0f} training images/s ({precision}, batch {kw['batch_size']})", ips)


BATCH_LABEL = {False: "batch 256", True: "batch 256 (quick: 4 x batch 64)"}


def latency_ms(model, in_shape, quick: bool) -> float:
    """Median ms per batch of 256 (quick: 3 timed batches of 64, a code-path check only)."""
    if quick:
        return metrics.measure_latency(model, in_shape, batch_size=64, repeats=3, warmup=1)["ms"] * 4
    return metrics.measure_latency(model, in_shape, batch_size=256, repeats=20)["ms"]


def finetune_kw(args, device, epochs) -> dict:
    kw = cifar_kw(args, device)
    return {**kw, "epochs": epochs, "lr": kw["lr"] / 4, "schedule": "cosine", "lookahead": False}


def check_magnitude(args, model, cifar, device, dense_acc):
    train_data, test_data = cifar
    model = copy.deepcopy(model)
    names = [n for n, m in prune.prunable_layers(model).items() if n != "0"]   # not the frozen whitening conv
    sparsity = 0.8
    masks = prune.prune_global(model, sparsity, layers=names)
    pruned_acc = evaluate(model, test_data)["accuracy"]
    epochs = 1 if args.quick else 2
    train(model, train_data, on_step=masks, device=device, progress=False, **finetune_kw(args, device, epochs))
    tuned_acc = evaluate(model, test_data)["accuracy"]
    kept = [prune.prunable_layers(model)[n].weight for n in names]
    held = sum(int((w == 0).sum()) for w in kept) / sum(w.numel() for w in kept)
    need = dense_acc - 3 if test_data.real and not args.quick else 0.0
    text = (f"{100 * held:.1f}% of the weights zero after fine-tuning (asked {100 * sparsity:.0f}%); "
            f"{dense_acc:.2f}% dense -> {pruned_acc:.2f}% pruned -> {tuned_acc:.2f}% after {epochs} epoch(s) "
            f"(need >= {need:.1f}%, no TTA)")
    return verdict(abs(held - sparsity) < 0.005 and tuned_acc >= need), text, None


def _cifar_or_lenet(fn, label, cifar_model, lenet_model):
    """Run fn on the CIFAR net; where mokit cannot yet apply it there (TypeError), say so and use LeNet-5."""
    try:
        return fn(cifar_model, "cifar")
    except TypeError as e:
        print(f"        {label}: the CIFAR net is not supported yet ({e}); on LeNet-5 / MNIST instead", flush=True)
        return fn(lenet_model, "mnist")


def check_channels(args, cifar_model, lenet_model, sets, device):
    def run(model, which):
        train_data, test_data = sets["cifar10" if which == "cifar" else "mnist"]
        producers = [p for p, _ in prune._chain(model)]
        plan = {p: 0.5 for p in producers if not (which == "cifar" and p == 0)}   # keep the whitening conv
        dense_acc = evaluate(model, test_data)["accuracy"]
        small = prune.prune_channels(model, plan).to(device)
        in_shape = train_data.shape
        lat = {k: latency_ms(m, in_shape, args.quick) for k, m in (("dense", model), ("pruned", small))}
        cut_acc = evaluate(small, test_data)["accuracy"]
        epochs = 1 if args.quick else 2
        kw = finetune_kw(args, device, epochs) if which == "cifar" else {"epochs": epochs, "optimizer": "adam",
                                                                         "lr": 5e-4, "schedule": "cosine"}
        train(small, train_data, device=device, progress=False, **kw)
        tuned_acc = evaluate(small, test_data)["accuracy"]
        p0, p1 = metrics.count_params(model), metrics.count_params(small)
        need = dense_acc - 5 if test_data.real and not args.quick else (10.0 if which == "mnist" else 0.0)
        text = (f"{which}: params {p0:,} -> {p1:,}; "
                f"{lat['dense']:.2f} -> {lat['pruned']:.2f} ms at {BATCH_LABEL[args.quick]} on "
                f"{device.type} ({lat['dense'] / lat['pruned']:.2f}x); {dense_acc:.2f}% -> {cut_acc:.2f}% -> "
                f"{tuned_acc:.2f}% after {epochs} epoch(s) (need >= {need:.1f}%)")
        return verdict(p1 < p0 and tuned_acc >= need), text, None
    return _cifar_or_lenet(run, "channel pruning", cifar_model, lenet_model)


def check_int8(args, cifar_model, lenet_model, sets, device):
    note = "x86 int8 kernels are CPU-only: quantized and timed on the CPU; " if device.type != "cpu" else ""

    def run(model, which):
        train_data, test_data = sets["cifar10" if which == "cifar" else "mnist"]
        test_cpu = test_data.to("cpu")
        fp32 = copy.deepcopy(model).cpu().eval()
        calib, batches = train_data.to("cpu"), 4 if args.quick else 20
        try:
            int8 = quantize.quantize_int8(fp32, calib, num_batches=batches)
        except TypeError:                     # eager mode takes plain chains; FX graph mode traces the rest
            if not hasattr(quantize, "quantize_int8_fx"):
                raise
            int8 = quantize.quantize_int8_fx(fp32, calib, num_batches=batches)
            which += " (FX graph mode)"
        acc32, acc8 = evaluate(fp32, test_cpu)["accuracy"], evaluate(int8, test_cpu)["accuracy"]
        lat = {k: latency_ms(m, train_data.shape, args.quick) for k, m in (("fp32", fp32), ("int8", int8))}
        need = acc32 - 1.0 if test_data.real and not args.quick else acc32 - 10.0
        text = (f"{note}{which}: {acc32:.2f}% fp32 -> {acc8:.2f}% int8 (need >= {need:.2f}%); "
                f"{lat['fp32']:.2f} -> {lat['int8']:.2f} ms at {BATCH_LABEL[args.quick]} "
                f"({lat['fp32'] / lat['int8']:.2f}x, {torch.get_num_threads()} threads)")
        return verdict(acc8 >= need), text, None
    return _cifar_or_lenet(run, "int8", cifar_model, lenet_model)


def check_distill(args, teacher, cifar, device):
    train_data, test_data = cifar
    widths = (4, 8, 8) if args.quick else (32, 64, 128)         # 11x and 6.7x fewer parameters
    epochs = 1 if args.quick else 4
    kw = {k: v for k, v in cifar_kw(args, device).items() if k not in ("augment", "label_smoothing", "lookahead")}
    kw["epochs"] = epochs
    cache = distill.CachedTeacher(teacher, train_data, batch_size=kw["batch_size"], seed=0)
    kd = fresh_cifar(train_data, widths, 0)
    train(kd, cache, loss_fn=distill.distill_loss(cache, temperature=4.0, alpha=0.9), device=device,
          progress=False, **kw)
    scratch = fresh_cifar(train_data, widths, 0)
    train(scratch, train_data, seed=0, device=device, progress=False, **kw)   # same epochs, no augmentation
    acc_kd, acc_sc = evaluate(kd, test_data)["accuracy"], evaluate(scratch, test_data)["accuracy"]
    ratio = metrics.count_params(teacher) / metrics.count_params(kd)
    need = 50.0 if test_data.real and not args.quick else 0.0
    text = (f"student widths {widths} ({ratio:.1f}x fewer params), {epochs} epoch(s): {acc_kd:.2f}% distilled vs "
            f"{acc_sc:.2f}% from scratch ({acc_kd - acc_sc:+.2f} points, one seed) (need >= {need}%)")
    return verdict(ratio >= 4 and acc_kd >= need), text, (kd, scratch, acc_kd, acc_sc)


def check_ensemble(args, students, cifar):
    kd, scratch, acc_kd, acc_sc = students
    acc = evaluate(ensemble.Ensemble([kd, scratch]), cifar[1])["accuracy"]
    need = min(acc_kd, acc_sc) - 1.0 if cifar[1].real and not args.quick else 0.0
    return verdict(finite(acc) and acc >= need), \
        f"{acc:.2f}% for the average of the two students ({acc_kd:.2f}%, {acc_sc:.2f}%) (need >= {need:.2f}%)", None


def check_search(args, mnist, device):
    rest, val = mnist[0].split_off(min(5000, len(mnist[0]) // 5))
    objective = search.train_objective(lambda c: create_model("lenet5", channels=(c["c1"], c["c2"])),
                                       rest, val, device=device)
    config = {"c1": 16, "c2": 32, "lr": 2e-3, "optimizer": "adam", "batch_size": 256}
    out = objective(config, 1)
    need = 95.0 if val.real and not args.quick else 20.0
    return verdict(out["val_acc"] >= need), (f"lenet5 {config}, 1 epoch: {out['val_acc']:.2f}% validation "
                                             f"accuracy in {out['train_seconds']:.1f} s (need >= {need}%)"), None


def check_nas(args, mnist, device):
    rest, val = mnist[0].split_off(min(5000, len(mnist[0]) // 5))
    space = nas.conv_space(channels=(4, 8), max_dense=0) if args.quick else nas.conv_space()
    config = search.sample(space, random.Random(0))
    out = nas.arch_objective(rest, val, device=device, lr=2e-3, batch_size=256)(config, 1)
    ok = finite(out["val_acc"]) and out["val_acc"] > 11.0 and out["params"] > 0
    return verdict(ok), (f"{nas.describe(config)}: {out['val_acc']:.2f}% validation accuracy, "
                         f"{out['params']:,} params, {out['macs']:,} MACs"), None


def check_export(model, cifar):
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        from mokit import export
    except ImportError as e:
        return "skipped", f"export needs onnx and onnxruntime: {e}", None
    test = cifar[1]
    x = test.x[:256].cpu()
    shape = test.shape
    with tempfile.TemporaryDirectory() as tmp:
        onnx_model = export.OnnxModel(export.export_onnx(model, Path(tmp) / "m.onnx", shape))
        program = export.load_program(export.export_program(model, Path(tmp) / "m.pt2", shape))
        d_onnx = export.max_abs_diff(model, onnx_model, x)
        d_prog = export.max_abs_diff(model, program, x)
        sub = test.take(slice(0, 1000))
        n = len(sub)
        acc_t = evaluate(export.on_cpu(model), sub.to("cpu"))["accuracy"]
        acc_o = evaluate(onnx_model, sub.to("cpu"))["accuracy"]
    ok = d_onnx < 1e-3 and d_prog < 1e-4 and abs(acc_t - acc_o) <= 0.2
    text = (f"ONNX max |diff| {d_onnx:.1e} (need < 1e-3), torch.export {d_prog:.1e} (need < 1e-4), on the CPU; "
            f"accuracy on {n} test images {acc_t:.2f}% torch vs {acc_o:.2f}% ONNX Runtime")
    return verdict(ok), text, None


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="default: CUDA when present (pick_device)")
    p.add_argument("--quick", action="store_true", help="tiny data and nets: checks the code path (CPU tests)")
    p.add_argument("--seeds", type=int, default=None, help="CIFAR recipe runs (default 3, quick 1)")
    p.add_argument("--epochs", type=int, default=None, help=f"CIFAR recipe epochs (default {GPU_EPOCHS}, quick 1)")
    p.add_argument("--batch-size", type=int, default=None, help="default 1024 (quick 256); lr scales with it")
    p.add_argument("--lr", type=float, default=None, help="default: the recipe's lr x batch / its batch")
    p.add_argument("--widths", type=int, nargs=3, default=None, help=f"cifar_net widths (default {GPU_WIDTHS})")
    p.add_argument("--precision", default=None, help="CIFAR recipe precision (default bf16 on CUDA, fp32 on a CPU)")
    p.add_argument("--json", default=None, help="also write every check's line and figures to this file")
    args = p.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    args.epochs = args.epochs if args.epochs is not None else (1 if args.quick else GPU_EPOCHS)
    args.batch_size = args.batch_size or (256 if args.quick else 1024)
    args.widths = tuple(args.widths or (QUICK_WIDTHS if args.quick else GPU_WIDTHS))
    for name in ("seeds", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    resolve_precision(args.precision, device)                      # a bad name fails here, before any work
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    print(f"mokit gpu_check on {device} ({name}); torch {torch.__version__}, python {platform.python_version()}, "
          f"{'QUICK' if args.quick else 'full'} mode, data root {mdata.data_root()}", flush=True)
    t_start = time.perf_counter()
    checks = Checks()
    loaded = checks.run("data", check_data, args, device)
    if loaded is None:
        print("FAILED: no data, nothing else can run")
        return 1
    sets, real = loaded
    checks.run("pack decode", check_pack, device)
    lenet = checks.run("lenet5 mnist", check_lenet5, sets["mnist"], device, args.quick)
    cifar = checks.run("cifar recipe", check_cifar, args, sets["cifar10"], device)
    if cifar is not None:
        checks.run("cifar target", check_target, cifar[1], real, args.quick, device)
    for precision in ("fp32", "bf16"):
        checks.run(f"throughput {precision}", check_throughput, args, sets["cifar10"], device, precision)
    if cifar is not None:
        model, summary = cifar
        checks.run("magnitude pruning", check_magnitude, args, model, sets["cifar10"], device, summary["acc"])
    if cifar is not None and lenet is not None:
        checks.run("channel pruning", check_channels, args, cifar[0], lenet[0], sets, device)
        checks.run("int8", check_int8, args, cifar[0], lenet[0], sets, device)
    if cifar is not None:
        students = checks.run("distillation", check_distill, args, cifar[0], sets["cifar10"], device)
        if students is not None:
            checks.run("ensemble", check_ensemble, args, students, sets["cifar10"])
    checks.run("search trial", check_search, args, sets["mnist"], device)
    checks.run("nas trial", check_nas, args, sets["mnist"], device)
    if cifar is not None:
        checks.run("export", check_export, cifar[0], sets["cifar10"])
    total = time.perf_counter() - t_start
    failed = checks.failed
    print(f"{len(checks.rows)} checks in {total:.0f} s: "
          + (f"{len(failed)} FAILED ({', '.join(failed)})" if failed else "none failed"), flush=True)
    if args.json:
        mdata.atomic_write_bytes(args.json, json.dumps({
            "device": str(device), "device_name": name, "torch": torch.__version__, "quick": args.quick,
            "real_data": real, "seconds": total, "checks": checks.rows,
            "cifar": {k: v for k, v in cifar[1].items()} if cifar is not None else None,
        }, indent=1, default=str).encode())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
