"""How good and how fast is mokit's CIFAR-10 recipe? Prints the figures (issue 12).

    MOKIT_DATA=../shared/data .venv/bin/python benchmarks/cifar_speed.py [--seeds 0 1 2] [--hand-epochs 2]

1. mokit's recipe (RECIPES["cifar_net"]) from scratch, per seed: test accuracy (with its test-time
   augmentation), training seconds, images/s; mean ± std.        target: >= 85% in <= 300 s (2-core CPU)
2. The same net, optimizer, schedule, augmentation and precision in a minimal hand-written loop:
   seconds per epoch against mokit.train's.                    target: mokit / hand <= 1.10x
3. The same hand loop fed by a torchvision DataLoader (RandomCrop(32, 2, reflect), RandomHorizontalFlip,
   ToTensor, Normalize on PIL images): seconds per epoch, the data path's cost.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mokit import data, models
from mokit.train import (
    OPTIMIZERS,
    SCHEDULES,
    autocast,
    evaluate,
    pick_device,
    resolve_precision,
    seed_everything,
    train,
)
from mokit.zoo import INITS, RECIPES, recipe_train_kw

RECIPE = {k: v for k, v in RECIPES["cifar_net"].items() if k != "dataset"}
TRAIN_KW = recipe_train_kw("cifar_net")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_model(train_data, seed: int):
    seed_everything(seed)
    model = models.create_model("cifar_net")
    INITS[RECIPE["init"]](model, train_data)
    return model


def mokit_run(train_data, test_data, seed: int, device, epochs: int | None = None) -> dict:
    """Train with mokit.train exactly as the recipe says; accuracy with the recipe's TTA."""
    kw = dict(TRAIN_KW)
    if epochs is not None:
        kw["epochs"] = epochs
    model = fresh_model(train_data, seed)
    sync(device)
    t0 = time.perf_counter()
    history = train(model, train_data, seed=seed, device=device, progress=False, **kw)
    sync(device)
    seconds = time.perf_counter() - t0
    return {"acc": evaluate(model, test_data, tta=RECIPE["tta"])["accuracy"], "seconds": seconds,
            "epoch_seconds": statistics.median(history.column("seconds")),
            "images_per_s": kw["epochs"] * len(train_data) / seconds}


def hand_loop(model, batches, *, epochs: int, device, precision: str) -> list[float]:
    """The loop a user writes: the recipe's optimizer and schedule, autocast, NHWC; seconds per epoch.

    `batches(epoch)` yields (x, y) on the device; no hooks, no bookkeeping, no lookahead; the recipe's
    freeze (the whitening bias stops training part-way) written out, since it changes the step's cost."""
    make_opt, _ = OPTIMIZERS[RECIPE["optimizer"]]
    opt = make_opt(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
    sched = SCHEDULES[RECIPE["schedule"]]
    n_steps = epochs * len(batches(None))
    base = [g["lr"] for g in opt.param_groups]
    params = dict(model.named_parameters())
    freeze_at = {params[name]: fraction * n_steps for name, fraction in RECIPE.get("freeze", {}).items()}
    model.to(device, memory_format=torch.channels_last).train()
    step, times = 0, []
    for epoch in range(epochs):
        sync(device)
        t0 = time.perf_counter()
        for xb, yb in batches(epoch):
            for g, lr in zip(opt.param_groups, base):
                g["lr"] = lr * sched(step / n_steps)
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with autocast(precision, device):
                out = model(xb)
            loss = F.cross_entropy(out.float(), yb.to(device), label_smoothing=RECIPE["label_smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for p, at in freeze_at.items():
                if step >= at:
                    p.requires_grad_(False)
                    p.grad = None
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def tensor_batches(train_data, seed: int):
    """Hand-written on-device augmentation: shuffle, reflect-pad 2 + random crop, random flip."""
    x, y, bs = train_data.x, train_data.y, RECIPE["batch_size"]
    g = torch.Generator().manual_seed(seed)

    def batches(epoch):
        if epoch is None:
            return range(-(-len(x) // bs))
        order = torch.randperm(len(x), generator=g).to(x.device)
        off = torch.randint(0, 5, (2, len(x)), generator=g).to(x.device)
        flip = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
        def gen():
            for i in range(0, len(x), bs):
                idx = order[i:i + bs]
                xb = data.translate(x[idx], off[0, idx], off[1, idx], 2, "reflect")
                yield torch.where(flip[idx][:, None, None, None], xb.flip(3), xb), y[idx]
        return gen()
    return batches


def loader_batches(seed: int):
    """The torchvision way: PIL images, per-item transforms, a DataLoader."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    spec = data.DATASETS["cifar10"]
    tf = T.Compose([T.RandomCrop(32, padding=2, padding_mode="reflect"), T.RandomHorizontalFlip(),
                    T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    ds = data.torchvision_dataset("cifar10", "train", transform=tf)
    loader = DataLoader(ds, batch_size=RECIPE["batch_size"], shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    return lambda epoch: range(len(loader)) if epoch is None else iter(loader)


def mean_std(values) -> str:
    values = list(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--hand-epochs", type=int, default=2, help="epochs timed per loop for the ratios")
    ap.add_argument("--skip-full", action="store_true", help="only the loop and data-path ratios")
    args = ap.parse_args()
    device = pick_device()
    precision = resolve_precision(RECIPE["precision"], device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, precision {precision}")
    train_data = data.load_dataset("cifar10", "train", device=device)
    test_data = data.load_dataset("cifar10", "test", device=device)
    if not train_data.real:
        print("WARNING: CIFAR-10 not found, timing the stand-in (accuracies are not CIFAR-10's)")
    print(f"recipe: {RECIPE}")

    if not args.skip_full:
        runs = []
        for seed in args.seeds:
            r = mokit_run(train_data, test_data, seed, device)
            runs.append(r)
            print(f"  seed {seed}: {r['acc']:.2f}%  {r['seconds']:.1f} s  {r['images_per_s']:.0f} images/s")
        acc, secs = [r["acc"] for r in runs], [r["seconds"] for r in runs]
        print(f"mokit recipe over {len(runs)} seeds: accuracy {mean_std(acc)} %, training {mean_std(secs)} s, "
              f"{mean_std(r['images_per_s'] for r in runs)} images/s")
        met = statistics.mean(acc) >= 85 and max(secs) <= 300
        print(f"TARGET >= 85% in <= 300 s: {'MET' if met else 'MISSED'} (moonshot 88%)")

    e = args.hand_epochs
    mk = mokit_run(train_data, test_data, 0, device, epochs=e)["epoch_seconds"]
    hand = statistics.median(hand_loop(fresh_model(train_data, 0), tensor_batches(train_data, 0),
                                       epochs=e, device=device, precision=precision))
    print(f"epoch: mokit.train {mk:.1f} s   hand loop {hand:.1f} s   ratio {mk / hand:.3f}x (target <= 1.10x; "
          f"mokit also runs lookahead and keeps loss / accuracy per step)")
    if train_data.real:
        tv = statistics.median(hand_loop(fresh_model(train_data, 0), loader_batches(0), epochs=1,
                                         device=device, precision=precision))
        print(f"epoch: hand loop fed by a torchvision DataLoader {tv:.1f} s   data-path ratio {tv / hand:.2f}x "
              f"slower than on-device tensors (num_workers=0)")
