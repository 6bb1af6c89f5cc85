"""Datasets as tensors on the device (where their files live: mokit.files, re-exported here).

A dataset is found, in order: torchvision's own layout under the data root; for CIFAR-10 also
an image pack `cifar10.pack` (one file of the tree's JPEGs, see pack_image_folder) and an
ImageFolder tree `cifar10/{train,test}/<class>/*.jpg`; a torchvision download (unless
MOKIT_OFFLINE=1); else a generated stand-in of the same shape and classes, announced loudly.
MOKIT_STANDIN=1 forces the stand-in (tests use it).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

import torch

from . import validate
from .files import (  # noqa: F401 - re-exported: data.atomic_write_bytes etc. keep working
    STALE_TMP_SECONDS,
    atomic_torch_save,
    atomic_write_bytes,
    cache_root,
    checkpoint_path,
    data_root,
    process_umask,
    remove_stale_temp_files,
    runs_root,
    safe_torch_load,
)

# ---------------------------------------------------------------------------------------------
# Dataset specs
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    shape: tuple[int, int, int]            # (C, H, W)
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: tuple[int, int]                 # (train, test)


DATASETS: dict[str, Spec] = {
    "mnist": Spec((1, 28, 28), tuple(str(i) for i in range(10)), (0.1307,), (0.3081,), (60000, 10000)),
    "fashion_mnist": Spec(
        (1, 28, 28),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (0.2860,), (0.3530,), (60000, 10000)),
    "cifar10": Spec(
        (3, 32, 32),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (50000, 10000)),
}
SPLITS = ("train", "test")


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def _check_name_split(name: str, split: str) -> Spec:
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    if not isinstance(split, str) or split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return DATASETS[name]




# ---------------------------------------------------------------------------------------------
# The in-memory dataset
# ---------------------------------------------------------------------------------------------

@dataclass
class TensorData:
    """A whole dataset held as tensors: x (N, C, H, W) float32 normalised, y (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor
    name: str
    split: str
    classes: tuple[str, ...]
    real: bool

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example (C, H, W)."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device) -> TensorData:
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def take(self, index: torch.Tensor | slice) -> TensorData:
        """A new TensorData with the examples at `index` (tensor of indices or a slice)."""
        return replace(self, x=self.x[index], y=self.y[index])

    def subset(self, n: int, seed: int = 0, balanced: bool = False) -> TensorData:
        """n examples drawn without replacement (seeded); balanced=True takes n/classes per class."""
        n = validate.integer("subset size", n, low=1, high=max(1, len(self)),
                             what=f"this {self.name}/{self.split} holds {len(self)} examples")
        seed = validate.integer("seed", seed)
        validate.flag("balanced", balanced)
        g = torch.Generator().manual_seed(seed)
        if not balanced:
            idx = torch.randperm(len(self), generator=g)[:n]
        else:
            per = n // self.num_classes
            if per < 1:
                raise ValueError(f"a balanced subset takes n / classes examples per class: subset size {n} "
                                 f"is below the {self.num_classes} classes")
            y = self.y.cpu()
            counts = torch.bincount(y, minlength=self.num_classes).tolist()
            short = [(c, k) for c, k in enumerate(counts) if k < per]
            if short:
                c, k = short[0]
                raise ValueError(f"a balanced subset of {n} takes {per} per class, but class "
                                 f"{self.classes[c]!r} has {k} example{'s' if k != 1 else ''}")
            idx = torch.cat([
                torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:per]]
                for c in range(self.num_classes)])
        return self.take(idx.to(self.x.device))

    def split_off(self, n: int, seed: int = 0) -> tuple[TensorData, TensorData]:
        """Split into (rest, held_out) with n held-out examples, e.g. a validation set."""
        if len(self) < 2:
            raise ValueError(f"split_off needs at least 2 examples, this {self.name}/{self.split} holds {len(self)}")
        n = validate.integer("held-out size", n, low=1, high=len(self) - 1,
                             what=f"this {self.name}/{self.split} holds {len(self)} examples")
        seed = validate.integer("seed", seed)
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).to(self.x.device)
        return self.take(idx[n:]), self.take(idx[:n])

    def batches(self, batch_size: int = 128, shuffle: bool = True, seed: int = 0,
                augment: bool = False, drop_last: bool = False) -> Batches:
        return Batches(self, batch_size, shuffle=shuffle, seed=seed, augment=augment, drop_last=drop_last)

    def __repr__(self) -> str:
        kind = "real" if self.real else "STAND-IN"
        return (f"TensorData({self.name}/{self.split}, {len(self)} examples of {self.shape}, "
                f"{self.num_classes} classes, {kind}, on {self.device})")


AUGMENTS = ("none", "crop_flip", "flip_translate")


def check_augment(augment) -> str:
    """False/None -> 'none', True -> 'crop_flip' (the classic CIFAR pair), a name -> itself."""
    name = "none" if augment is None or augment is False else "crop_flip" if augment is True else augment
    if name not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; valid: {', '.join(AUGMENTS)} (or True / False)")
    return name


class Batches:
    """Re-iterable mini-batches from a TensorData, all on its device.

    Shuffling uses one seeded generator, so epoch k sees the same order on every run. Augmentations
    run on the device; their random offsets are drawn once per epoch (one host -> device copy per epoch):
      "crop_flip"       random crop after zero-padding by 4, random horizontal flip (the classic pair)
      "flip_translate"  translate by up to 2 pixels (reflect padding) and *alternating* flips: each image
                        has a fixed random flip bit, inverted on odd epochs, so every image is seen both
                        ways in any two epochs (airbench)
    """

    def __init__(self, data: TensorData, batch_size: int = 128, *, shuffle: bool = True,
                 seed: int = 0, augment: bool | str = False, drop_last: bool = False):
        if not isinstance(data, TensorData):
            raise ValueError(f"Batches needs a TensorData (see load_dataset), got {type(data).__name__}")
        if len(data) == 0:
            raise ValueError(f"data has no examples ({data.name}/{data.split} is empty); Batches needs at least one")
        batch_size = validate.integer("batch_size", batch_size, low=1)
        seed = validate.integer("seed", seed)
        validate.flag("shuffle", shuffle)
        validate.flag("drop_last", drop_last)
        self.data, self.batch_size, self.shuffle = data, min(batch_size, len(data)), shuffle
        self.augment, self.drop_last = check_augment(augment), drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0
        # each image's own flip bit (flip_translate); drawn only there, so other modes keep their stream
        self._flip_bits = torch.rand(len(data), generator=self.generator) < 0.5 \
            if self.augment == "flip_translate" else None

    def __len__(self) -> int:
        n, b = len(self.data), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def _epoch_offsets(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, str] | None:
        """(dy, dx, flip) for every example this epoch, on the data's device, + padding and its mode."""
        n, g = len(self.data), self.generator
        if self.augment == "none":
            return None
        pad, mode = (4, "constant") if self.augment == "crop_flip" else (2, "reflect")
        off = torch.randint(0, 2 * pad + 1, (2, n), generator=g)
        if self.augment == "crop_flip":
            flip = torch.rand(n, generator=g) < 0.5
        else:
            assert self._flip_bits is not None                # drawn in __init__ for flip_translate
            flip = self._flip_bits ^ bool(self.epoch % 2)
        dev = self.data.x.device
        return off[0].to(dev), off[1].to(dev), flip.to(dev), pad, mode

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, x, y = len(self.data), self.data.x, self.data.y
        order = torch.randperm(n, generator=self.generator).to(x.device) if self.shuffle else None
        aug = self._epoch_offsets()
        self.epoch += 1
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl] if order is not None else torch.arange(n, device=x.device)[sl]
            xb, yb = x[idx], y[idx]
            if aug is not None:
                dy, dx, flip, pad, mode = aug
                xb = translate(xb, dy[idx], dx[idx], pad, mode)
                xb = torch.where(flip[idx][:, None, None, None], xb.flip(3), xb)
            yield xb, yb


Batch: TypeAlias = "tuple[torch.Tensor, torch.Tensor]"
"""One mini-batch: (inputs, integer labels)."""
DataOrBatches: TypeAlias = "TensorData | Iterable[Batch]"
"""What training takes: a whole dataset, or re-iterable batches with a len() (a list, Batches, a CachedTeacher)."""


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int, mode: str = "constant") -> torch.Tensor:
    """Image i shifted so that its window starts at (dy[i], dx[i]) of the image padded by `pad`.

    (B, C, H, W) -> (B, C, H, W); dy, dx in [0, 2*pad]; (pad, pad) is the identity. Two gathers (rows,
    then columns) instead of one 4-D fancy index: about 1.6x faster on a CPU.
    """
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode=mode)          # (B, C, H+2p, W+2p)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]   # (B, 1, H, 1)
    out = padded.gather(2, rows.expand(b, c, h, w + 2 * pad))                   # (B, C, H, W+2p)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]   # (B, 1, 1, W)
    return out.gather(3, cols.expand(b, c, h, w))


def random_crop(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Each image cropped back to its size at a random offset after zero-padding by `pad`."""
    pad = validate.integer("pad", pad, low=0)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    off = torch.randint(0, 2 * pad + 1, (2, len(x)), generator=generator).to(x.device)
    return translate(x, off[0], off[1], pad)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero-padding by `pad`, then a random horizontal flip; (B, C, H, W) -> same."""
    pad = validate.integer("pad", pad, low=0)
    out = random_crop(x, generator, pad)
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, out.flip(3), out)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def load_dataset(name: str, split: str = "train", *, root: str | os.PathLike | None = None,
                 subset: int | None = None, device=None, seed: int = 0) -> TensorData:
    """Load `name` ('mnist', 'fashion_mnist', 'cifar10') `split` as a TensorData on `device`.

    Pixels are scaled to [0, 1] and normalised per channel: x = (pixel/255 - mean) / std.
    subset=n keeps n examples drawn with `seed`. Decoded uint8 tensors are cached, so the second
    load takes well under a second for MNIST-sized sets.
    """
    spec = _check_name_split(name, split)
    size = spec.sizes[SPLITS.index(split)]
    if subset is not None:
        subset = validate.integer("subset", subset, low=1, high=size,
                                  what=f"or None; {name}'s {split} split holds {size} examples")
    seed = validate.integer("seed", seed)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"root must be a folder (str or os.PathLike) or None, got {root!r}")
    root = Path(root).expanduser().resolve() if root is not None else data_root()
    images, labels, real = _load_uint8(name, split, root)
    raw = TensorData(images, labels.long(), name, split, spec.classes, real)   # uint8: subset and move
    if subset is not None and subset > len(raw):
        raise ValueError(f"subset {subset} is larger than the {name} {split} split found under {root}: "
                         f"{len(raw)} examples{'' if real else ' (a generated stand-in)'}")
    if subset is not None and subset < len(raw):                              # before the 4x larger floats
        raw = raw.subset(subset, seed=seed)
    if device is not None:
        raw = raw.to(device)
    return replace(raw, x=_normalise(raw.x, spec))


def torchvision_dataset(name: str, split: str = "train", transform=None, root=None):
    """The torchvision Dataset object for a real dataset under the data root (PIL images per item).

    For comparing with the classic DataLoader pipeline (PIL image -> ToTensor -> Normalize per item).
    CIFAR-10 is torchvision's CIFAR10 when its python batches are there, else an ImageFolder over the
    `cifar10/<split>/<class>/` tree (JPEG files decoded per item).
    """
    import torchvision

    _check_name_split(name, split)
    root = Path(root).expanduser().resolve() if root is not None else data_root()
    cls = getattr(torchvision.datasets, _TV_CLASSES[name])
    if name == "cifar10":
        if (root / "cifar-10-batches-py").is_dir():
            return cls(str(root), train=split == "train", download=False, transform=transform)
        if (root / "cifar10" / split).is_dir():
            ds = torchvision.datasets.ImageFolder(str(root / "cifar10" / split), transform=transform)
            if tuple(ds.classes) != tuple(sorted(DATASETS[name].classes)):
                raise ValueError(f"{root / 'cifar10' / split}: class folders {ds.classes} are not CIFAR-10's")
            return ds
        raise FileNotFoundError(f"no cifar-10-batches-py or cifar10/{split} under {root}")
    if not (root / cls.__name__ / "raw").is_dir():
        raise FileNotFoundError(f"no {cls.__name__}/raw under {root}")
    return cls(str(_writable_mirror(root, cls)), train=split == "train", download=True, transform=transform)


def _normalise(images: torch.Tensor, spec: Spec) -> torch.Tensor:
    mean = torch.tensor(spec.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def _load_uint8(name: str, split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(images uint8 (N, C, H, W), labels int64 (N,), real?) from the cache or a source."""
    if os.environ.get("MOKIT_STANDIN") == "1":
        return (*make_standin(name, split), False)
    key = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    cache = cache_root() / "tensors" / f"{name}-{split}-{key}.pt"
    if cache.exists():
        try:
            blob = safe_torch_load(cache)
            return blob["images"], blob["labels"], True
        except ValueError as e:  # our own cache: rebuild it rather than fail
            warnings.warn(f"{e}; rebuilding the cache", stacklevel=2)
    found = _load_real(name, split, root)
    if found is None:
        _announce_standin(name, root)
        return (*make_standin(name, split), False)
    images, labels = found
    atomic_torch_save({"images": images, "labels": labels}, cache)
    return images, labels, True


_TV_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _load_real(name: str, split: str, root: Path):
    """Try torchvision's layout, then (CIFAR-10) an image pack and an ImageFolder tree, then a download."""
    import torchvision

    cls = getattr(torchvision.datasets, _TV_CLASSES[name])
    train = split == "train"
    if name == "cifar10" and (root / "cifar-10-batches-py").is_dir():
        ds = cls(str(root), train=train, download=False)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
    if name == "cifar10" and (root / PACK_NAME).is_file():         # one file of JPEGs (pack_image_folder)
        return load_pack(root / PACK_NAME, name, split)
    if name == "cifar10" and (root / "cifar10" / split).is_dir():
        return _load_image_folder(root / "cifar10" / split, DATASETS[name])
    if name != "cifar10" and (root / cls.__name__ / "raw").is_dir():
        ds = cls(str(_writable_mirror(root, cls)), train=train, download=True)
        _check_raw_files(ds)
        return ds.data.unsqueeze(1).contiguous(), ds.targets.clone()
    if os.environ.get("MOKIT_OFFLINE") == "1":
        return None
    try:  # a real download, when the network allows
        target = cache_root() / "downloads"
        ds = cls(str(target), train=train, download=True)
    except Exception as e:  # no network, blocked host, ...
        warnings.warn(f"could not download {name}: {e}", stacklevel=3)
        return None
    if name == "cifar10":
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.clone()


def _writable_mirror(root: Path, cls) -> Path:
    """torchvision unpacks .gz archives beside them; never write into a data root we do not own.

    Outside the cache root, the archives are checked against torchvision's md5 sums and linked
    into a mirror under the cache root, where torchvision unpacks them.
    """
    if root == cache_root():
        return root
    from torchvision.datasets.utils import check_integrity

    raw = root / cls.__name__ / "raw"
    for filename, md5 in (f for f in cls.resources):
        path = raw / Path(filename).name
        if path.exists() and not check_integrity(str(path), md5):
            raise ValueError(f"{path} is corrupt: its md5 is not torchvision's {md5}; "
                             f"replace the file or remove it to use a download / stand-in")
    mirror = cache_root() / "mirror" / hashlib.sha1(str(root).encode()).hexdigest()[:8]
    (mirror / cls.__name__ / "raw").mkdir(parents=True, exist_ok=True)
    for f in raw.glob("*.gz"):
        link = mirror / cls.__name__ / "raw" / f.name
        if not link.exists():
            link.symlink_to(f)
    return mirror


def _check_raw_files(ds) -> None:
    """A truncated or damaged MNIST file yields the wrong count: name the file."""
    expected = 60000 if ds.train else 10000
    if len(ds.data) != expected or len(ds.targets) != expected:
        raise ValueError(f"{ds.raw_folder}: expected {expected} examples, found {len(ds.data)}; "
                         f"the files there are corrupt")


def _load_image_folder(folder: Path, spec: Spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an ImageFolder tree (class folders in the spec's order) to uint8 tensors."""
    from PIL import Image
    from tqdm.auto import tqdm

    missing = [c for c in spec.classes if not (folder / c).is_dir()]
    if missing:
        raise ValueError(f"{folder}: class folders {missing} are missing; expected {list(spec.classes)}")
    files = [(p, label) for label, c in enumerate(spec.classes) for p in sorted((folder / c).iterdir())]
    images = torch.empty((len(files), *spec.shape), dtype=torch.uint8)
    for i, (p, _) in enumerate(tqdm(files, desc=f"decoding {folder.parent.name}/{folder.name}",
                                    mininterval=2)):
        try:
            with Image.open(p) as im:
                arr = torch.frombuffer(bytearray(im.convert("RGB").tobytes()), dtype=torch.uint8)
        except Exception as e:
            raise ValueError(f"cannot decode image {p}: {e}") from e
        c, h, w = spec.shape
        if arr.numel() != h * w * c:
            raise ValueError(f"image {p} is not {h}x{w}x{c}")
        images[i] = arr.view(h, w, c).permute(2, 0, 1)
    return images, torch.tensor([label for _, label in files])


# ---------------------------------------------------------------------------------------------
# Offline stand-ins
# ---------------------------------------------------------------------------------------------

def make_standin(name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A generated dataset of the real one's shape and classes, with a learnable signal.

    Each class has a fixed smooth random template; an example is its template, randomly shifted
    by up to 2 pixels, scaled, plus noise. Not MNIST - but a model must learn to tell classes apart.
    """
    spec = DATASETS[name]
    c, h, w = spec.shape
    n = spec.sizes[0] if split == "train" else spec.sizes[1]
    n = min(n, 12000 if split == "train" else 2000)        # enough to learn; fast to make
    g = torch.Generator().manual_seed(1234)                # templates shared by both splits
    coarse = torch.rand(len(spec.classes), c, h // 4, w // 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    templates = (templates - templates.mean()) * 3
    g.manual_seed(1 if split == "train" else 2)
    labels = torch.randint(0, len(spec.classes), (n,), generator=g)
    x = random_crop(templates[labels], g, pad=2)
    x = x * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)) + 0.8 * torch.randn(x.shape, generator=g)
    images = ((x.clamp(-2, 2) + 2) / 4 * 255).round().to(torch.uint8)
    return images, labels


def _announce_standin(name: str, root: Path) -> None:
    msg = (f"\n{'!' * 78}\n!! mokit: dataset {name!r} not found under {root} and not downloadable.\n"
           f"!! Using a GENERATED STAND-IN of the same shape and classes. Numbers you see are NOT\n"
           f"!! {name} numbers. Put the real files there or set MOKIT_DATA (see data/README.md).\n"
           f"{'!' * 78}")
    print(msg)
    warnings.warn(f"mokit: using a generated stand-in for {name}", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Image packs: an ImageFolder tree of JPEGs as one file that travels (e.g. to a lent GPU)
# ---------------------------------------------------------------------------------------------
# File layout (version 1; integers little-endian; nothing in it is ever executed - no pickle):
#   magic         8 bytes   b"MKPACK1\n"
#   header size   8 bytes   unsigned H
#   header        H bytes   UTF-8 JSON: {"format": "mokit-image-pack", "version": 1,
#                           "classes": [names], "prefixes": [byte lengths], "splits": [
#                           {"name": "train", "count": N}, ...], "body_bytes": B, "body_sha256": hex}
#   body          B bytes   the shared prefixes, concatenated; then per split, in the header's order:
#                           prefix id uint16 x N | label uint16 x N | tail length uint32 x N | the tails
# Image i's JPEG file is, byte for byte, prefixes[prefix_id[i]] + tail[i]: the prefix is the JPEG
# header up to the end of its start-of-scan segment (quantisation and Huffman tables, 623 bytes
# for CIFAR-10), shared by every image an encoder wrote with the same settings; the tail is the
# image's own entropy-coded data. So CIFAR-10's 60,000 JPEGs (52.7 MiB) pack into about 18 MB.

PACK_MAGIC = b"MKPACK1\n"
PACK_NAME = "cifar10.pack"           # <data root>/cifar10.pack is loaded before the cifar10/ tree


def _jpeg_header_size(payload: bytes, where: Path) -> int:
    """Bytes of the JPEG header: everything before the entropy-coded data (end of the SOS segment)."""
    if payload[:2] != b"\xff\xd8":
        raise ValueError(f"{where} is not a JPEG file (no FF D8 start marker); an image pack holds JPEGs only")
    i = 2
    while i + 4 <= len(payload):
        if payload[i] != 0xFF:
            break
        marker, size = payload[i + 1], int.from_bytes(payload[i + 2:i + 4], "big")
        i += 2 + size
        if marker == 0xDA:                                   # start of scan: the data follows
            return min(i, len(payload))
    return 0                                                 # unusual layout: share nothing, keep it whole


def pack_image_folder(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Pack `folder`/{train,test}/<class>/*.jpg into one file at `path` (atomic write); returns the path.

    Every file's bytes are kept exactly (see the layout above); labels index the sorted class
    folders, which both splits must share. Files are taken in sorted order, as the ImageFolder
    loader takes them. Make CIFAR-10's with `python -m mokit.data pack <cifar10 folder> <file>`.
    """
    import json

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; expected one holding {'/, '.join(SPLITS)}/ class folders")
    classes = None
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in SPLITS:
        sub = folder / split
        names = sorted(p.name for p in sub.iterdir() if p.is_dir()) if sub.is_dir() else []
        if not names:
            raise ValueError(f"{sub} has no class folders; expected {folder}/{{{','.join(SPLITS)}}}/<class>/*.jpg")
        if classes is not None and names != classes:
            raise ValueError(f"{sub}: class folders {names} differ from {folder / SPLITS[0]}'s {classes}")
        classes = names
        files[split] = [(p, label) for label, c in enumerate(names)
                        for p in sorted((sub / c).iterdir()) if p.is_file()]
        if not files[split]:
            raise ValueError(f"{sub} holds no image files")
    prefixes: dict[bytes, int] = {}
    sections: list[bytes] = []
    for split in SPLITS:
        ids, labels, sizes, tails = [], [], [], []
        for p, label in files[split]:
            payload = p.read_bytes()
            cut = _jpeg_header_size(payload, p)
            prefix = payload[:cut] if len(prefixes) < 65535 or payload[:cut] in prefixes else b""
            ids.append(prefixes.setdefault(prefix, len(prefixes)))
            tail = payload[len(prefix):]
            labels.append(label)
            sizes.append(len(tail))
            tails.append(tail)
        sections += [_le_array(ids, 2), _le_array(labels, 2), _le_array(sizes, 4), b"".join(tails)]
    body = b"".join([*prefixes, *sections])
    header = json.dumps({
        "format": "mokit-image-pack", "version": 1, "classes": classes,
        "prefixes": [len(p) for p in prefixes],
        "splits": [{"name": s, "count": len(files[s])} for s in SPLITS],
        "body_bytes": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}).encode()
    return atomic_write_bytes(path, PACK_MAGIC + len(header).to_bytes(8, "little") + header + body)


def _le_array(values: list[int], width: int) -> bytes:
    return b"".join(v.to_bytes(width, "little") for v in values)


def read_pack(path: str | os.PathLike) -> tuple[dict, dict[str, tuple[list[bytes], torch.Tensor]]]:
    """(header, {split: (JPEG files' bytes, labels int64 (N,))}) of an image pack, checked.

    A truncated, damaged or foreign file raises ValueError naming it (the body's SHA-256 is checked).
    """
    import json

    import numpy as np

    path = Path(path)

    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid mokit image pack: {why}")

    blob = path.read_bytes()
    if blob[:8] != PACK_MAGIC:
        raise bad(f"it does not start with {PACK_MAGIC!r}")
    size = int.from_bytes(blob[8:16], "little")
    try:
        header = json.loads(blob[16:16 + size].decode())
        classes, splits, body_bytes = header["classes"], header["splits"], int(header["body_bytes"])
        prefix_sizes = [int(n) for n in header["prefixes"]]
        counts = [(s["name"], int(s["count"])) for s in splits]
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"its header cannot be read ({e})") from e
    if header.get("format") != "mokit-image-pack" or header.get("version") != 1:
        raise bad(f"format {header.get('format')!r} version {header.get('version')!r}; "
                  f"this mokit reads 'mokit-image-pack' version 1")
    body = memoryview(blob)[16 + size:]
    if len(body) != body_bytes:
        raise bad(f"the body has {len(body)} bytes, the header says {body_bytes} (truncated?)")
    if hashlib.sha256(body).hexdigest() != header.get("body_sha256"):
        raise bad("the body's SHA-256 does not match the header (the file is damaged)")
    at, prefixes = 0, []
    for n in prefix_sizes:
        prefixes.append(bytes(body[at:at + n]))
        at += n
    out = {}
    for name, n in counts:
        try:
            ids = np.frombuffer(body, "<u2", n, at)
            labels = np.frombuffer(body, "<u2", n, at + 2 * n)
            sizes = np.frombuffer(body, "<u4", n, at + 4 * n).astype(np.int64)
        except ValueError as e:                              # counts that run past the body
            raise bad(f"split {name!r} does not fit in the file ({e})") from e
        at += 8 * n
        if n and (ids.max() >= len(prefixes) or labels.max() >= len(classes)):
            raise bad(f"split {name!r} refers to a prefix or class that does not exist")
        ends = at + np.cumsum(sizes)
        if n and ends[-1] > len(body):
            raise bad(f"split {name!r} runs past the end of the file")
        starts = ends - sizes
        files = [prefixes[i] + bytes(body[s:e]) for i, s, e in zip(ids.tolist(), starts.tolist(), ends.tolist())]
        out[name] = (files, torch.from_numpy(labels.astype(np.int64)))
        at = int(ends[-1]) if n else at
    if at != len(body):
        raise bad(f"{len(body) - at} bytes are left over after the last split")
    return header, out


def _decode_device(device) -> torch.device:
    """Where to decode JPEGs: `device` if given, else the CPU (libjpeg).

    Not the GPU by default, measured on an H200 (benchmarks/gpu_check.py, 2026-12-04): nvJPEG decoded
    CIFAR-10's test JPEGs slower than 16 CPU cores (15k vs 25k images/s) and not to the same pixels
    (mean |diff| 1.2 levels, since its chroma upsampling differs from libjpeg's); a net trained on
    nvJPEG-decoded images scored 0.4 to 0.7 points lower on libjpeg-decoded ones. One decoder everywhere
    keeps checkpoints trained on a CPU valid on a GPU machine."""
    return torch.device(device) if device is not None else torch.device("cpu")


def decode_jpegs(files: list[bytes], shape: tuple[int, int, int], *, device=None, where: str = "",
                 chunk: int = 4096) -> torch.Tensor:
    """JPEG files' bytes -> uint8 (N, C, H, W) on the CPU, decoded in batches by torchvision.io.decode_jpeg
    on `device` (default: the CPU, see _decode_device); a CUDA decoder that fails falls back to the CPU."""
    with warnings.catch_warnings():         # torchvision >= 0.29 points at TorchCodec; decode_jpeg still works
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision.*")
        from torchvision.io import ImageReadMode, decode_jpeg

    c, h, w = shape
    mode = ImageReadMode.RGB if c == 3 else ImageReadMode.GRAY
    device = _decode_device(device)
    out = torch.empty((len(files), c, h, w), dtype=torch.uint8)
    for start in range(0, len(files), chunk):
        batch = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files[start:start + chunk]]
        try:
            images = decode_jpeg(batch, mode=mode, device=device)
        except Exception as e:  # a damaged file (CPU) is named; a GPU decoder falls back
            if device.type == "cpu":
                raise ValueError(f"cannot decode a JPEG among images {start}..{start + len(batch) - 1} "
                                 f"of {where}: {e}") from e
            warnings.warn(f"decoding JPEGs on {device} failed ({e}); decoding on the CPU", stacklevel=2)
            device = torch.device("cpu")
            images = decode_jpeg(batch, mode=mode, device=device)
        for j, im in enumerate(images):
            if tuple(im.shape) != (c, h, w):
                raise ValueError(f"image {start + j} of {where} is {tuple(im.shape)}, not {(c, h, w)}")
        out[start:start + len(images)] = torch.stack(images).cpu()
    return out


def load_pack(path: str | os.PathLike, name: str, split: str, *, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, C, H, W), labels int64 (N,)) of `split` from an image pack of dataset `name`,
    labels in the dataset's class order; the JPEGs are decoded on `device` (see decode_jpegs)."""
    spec = _check_name_split(name, split)
    header, splits = read_pack(path)
    if sorted(header["classes"]) != sorted(spec.classes):
        raise ValueError(f"{path}: its classes {header['classes']} are not {name}'s {list(spec.classes)}")
    if split not in splits:
        raise ValueError(f"{path} holds no {split!r} split; it holds {', '.join(splits)}")
    files, labels = splits[split]
    to_spec = torch.tensor([spec.classes.index(c) for c in header["classes"]])
    return decode_jpegs(files, spec.shape, device=device, where=f"{path} ({split})"), to_spec[labels]


def _main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mokit.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack <folder>/{train,test}/<class>/*.jpg into one file")
    p.add_argument("folder")
    p.add_argument("out")
    args = parser.parse_args(argv)
    out = pack_image_folder(args.folder, args.out)
    header, _ = read_pack(out)
    counts = ", ".join(f"{s['count']} {s['name']}" for s in header["splits"])
    print(f"wrote {out}: {out.stat().st_size / 2**20:.1f} MiB, {counts} images, {len(header['classes'])} classes")


if __name__ == "__main__":
    _main()
