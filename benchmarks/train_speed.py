"""How fast is mokit's training loop and in-memory data path? Prints the figures.

    MOKIT_DATA=../shared/data .venv/bin/python benchmarks/train_speed.py [--epochs-repeat 3]

1. mokit.train epoch time vs a minimal hand-written PyTorch loop over the same tensors
   (same model, optimizer, batch size, shuffling on the same device; the hand loop keeps PyTorch's
   default contiguous NCHW layout).   target: MLP <= 1.15x the hand loop's time; conv nets, where
   mokit trains channels_last, >= 1.3x faster than the hand loop (LeNet-5)
2. The in-memory batch iterator vs a torchvision DataLoader with ToTensor/Normalize, one pass
   over MNIST's training set without a model.                           target: >= 5x faster
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mokit import data, models
from mokit.train import pick_device, seed_everything, train, use_channels_last


def hand_loop(model, x, y, batch_size, lr, seed):
    """The minimal loop everybody writes: shuffle, slice, forward, loss, backward, step."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.randperm(len(x), generator=g).to(x.device)
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def time_epoch(fn):
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def loop_overhead(model_name, train_data, repeats, batch_size=128):
    """Median epoch time of each loop; the order alternates so neither always runs first (warm-up)."""
    def mokit_epoch(r):
        seed_everything(r)
        m = models.create_model(model_name)
        return time_epoch(lambda: train(m, train_data, epochs=1, lr=1e-3, schedule="constant",
                                        batch_size=batch_size, seed=r, progress=False))

    def hand_epoch(r):
        seed_everything(r)
        m = models.create_model(model_name).to(train_data.device)
        return time_epoch(lambda: hand_loop(m, train_data.x, train_data.y, batch_size, 1e-3, r))

    warm = models.create_model(model_name).to(train_data.device)     # warm-up: kernels, allocator
    hand_loop(warm, train_data.x[:5000], train_data.y[:5000], batch_size, 1e-3, 0)
    mokit_t, hand_t = [], []
    for r in range(repeats):
        pair = (mokit_epoch, hand_epoch) if r % 2 == 0 else (hand_epoch, mokit_epoch)
        for fn in pair:
            (mokit_t if fn is mokit_epoch else hand_t).append(fn(r))
    a, b = statistics.median(mokit_t), statistics.median(hand_t)
    if use_channels_last(models.create_model(model_name), train_data.device):
        target, met = ">= 1.3x faster: mokit trains conv nets channels_last", b / a >= 1.3
    else:
        target, met = "<= 1.15x the hand loop's time", a / b <= 1.15
    print(f"{model_name:9s} epoch: mokit.train {a:6.2f} s   hand loop {b:6.2f} s   mokit is {b / a:.2f}x as fast "
          f"(target {target}: {'MET' if met else 'MISSED'}; median of {repeats}, order alternating)")
    return a / b


def data_path(repeats, batch_size=128):
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    mem = data.load_dataset("mnist", "train")
    tv = data.torchvision_dataset("mnist", "train",
                                  transform=T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]))
    loader = DataLoader(tv, batch_size=batch_size, shuffle=True, num_workers=0)
    def consume(batches):
        n = 0
        for _xb, yb in batches:
            n += len(yb)
        assert n == 60000
    mem_t = [time_epoch(lambda r=r: consume(mem.batches(batch_size, seed=r))) for r in range(repeats)]
    tv_t = [time_epoch(lambda: consume(loader)) for _ in range(max(1, repeats // 2))]
    a, b = statistics.median(mem_t), statistics.median(tv_t)
    print(f"MNIST pass, batch {batch_size}: in-memory {a:.3f} s   DataLoader(ToTensor, Normalize) {b:.2f} s   "
          f"speed-up {b / a:.1f}x (target >= 5x)")
    return b / a


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    device = pick_device()
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    train_data = data.load_dataset("mnist", "train", device=device)
    if not train_data.real:
        print("WARNING: MNIST not found, timing the stand-in")
    for name in ("lenet300", "lenet5"):
        loop_overhead(name, train_data, args.repeats)
    if train_data.real:
        data_path(args.repeats)
