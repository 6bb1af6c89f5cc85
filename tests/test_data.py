import gzip

import pytest
import torch

from mokit import data, files


def test_standin_shapes_classes_and_signal(standin):
    for name, spec in data.DATASETS.items():
        d = data.load_dataset(name, "test")
        assert not d.real
        assert d.shape == spec.shape and d.classes == spec.classes
        assert d.y.min() >= 0 and d.y.max() == len(spec.classes) - 1
        # a real learnable signal: class means differ far more than noise would make them
        means = torch.stack([d.x[d.y == c].mean(0) for c in range(d.num_classes)])
        assert means.std(0).mean() > 0.1


def test_standin_is_announced(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MOKIT_OFFLINE", "1")
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="stand-in"):
        d = data.load_dataset("mnist", "test", root=tmp_path / "empty")
    assert not d.real
    assert "STAND-IN" in capsys.readouterr().out


def test_bad_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid names: cifar10, fashion_mnist, mnist"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="valid splits"):
        data.load_dataset("mnist", "validation")
    with pytest.raises(ValueError, match="subset"):
        data.load_dataset("mnist", subset=0)


def test_batches_seeded_cover_everything_and_reiterate(standin):
    d = data.load_dataset("mnist", "test", subset=500)
    b1, b2 = d.batches(64, seed=3), d.batches(64, seed=3)
    assert len(b1) == 8
    first = [y for _, y in b1]
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in b2]))
    assert sorted(torch.cat(first).tolist()) == sorted(d.y.tolist())
    second_epoch = torch.cat([y for _, y in b1])
    assert not torch.equal(second_epoch, torch.cat(first))      # a new order each epoch
    with pytest.raises(ValueError, match="batch_size"):
        d.batches(0)


def test_random_crop_flip_keeps_shape_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    out = data.random_crop_flip(x, g, pad=2)
    assert out.shape == x.shape
    assert data.random_crop(x, torch.Generator().manual_seed(0), pad=0).equal(x)


def test_subset_balanced_and_split(standin):
    d = data.load_dataset("mnist", "train")
    s = d.subset(1000, balanced=True)
    assert torch.bincount(s.y, minlength=10).tolist() == [100] * 10
    rest, held = d.split_off(100)
    assert len(held) == 100 and len(rest) == len(d) - 100


def _mnist_tree(root, corrupt=False):
    import torchvision
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for filename, _ in torchvision.datasets.MNIST.resources:
        (raw / filename).write_bytes(gzip.compress(b"not mnist" if corrupt else b""))
    return root


def test_corrupt_dataset_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path / "cache"))
    root = _mnist_tree(tmp_path / "data", corrupt=True)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is corrupt"):
        data.load_dataset("mnist", "train", root=root)


def test_real_mnist_cached_when_available():
    if not (data.data_root() / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not available (set MOKIT_DATA)")
    import time
    d = data.load_dataset("mnist", "test")
    t0 = time.perf_counter()
    d2 = data.load_dataset("mnist", "test")
    assert time.perf_counter() - t0 < 2.0
    assert d.real and len(d) == 10000 and torch.equal(d.y, d2.y)
    assert abs(d.x.mean().item()) < 0.05 and abs(d.x.std().item() - 1) < 0.05


def test_atomic_write_and_safe_load(tmp_path):
    p = tmp_path / "x.pt"
    data.atomic_torch_save({"a": torch.ones(2)}, p)
    assert torch.equal(data.safe_torch_load(p)["a"], torch.ones(2))
    assert p.stat().st_mode & 0o777 == 0o666 & ~files.process_umask()      # not mkstemp's 0600
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=str(p)):
        data.safe_torch_load(p)
    assert not list(tmp_path.glob(".*tmp"))


# ---------------------------------------------------------------------------------------------
# Image packs (pack_image_folder / read_pack / load_pack)
# ---------------------------------------------------------------------------------------------

def _jpeg_tree(folder, per_class=(2, 1), quality=75):
    """A tiny CIFAR-10-shaped ImageFolder tree of PIL-written JPEGs: {train,test}/<class>/NNNN.jpg."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split, n in zip(data.SPLITS, per_class):
        for c in data.DATASETS["cifar10"].classes:
            (folder / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / split / c / f"{i:04d}.jpg", quality=quality)
    return folder


def test_pack_round_trip_keeps_bytes_images_and_labels(tmp_path, monkeypatch):
    monkeypatch.delenv("MOKIT_STANDIN", raising=False)
    monkeypatch.setenv("MOKIT_CACHE", str(tmp_path / "cache"))
    tree = _jpeg_tree(tmp_path / "cifar10")
    root = tmp_path / "root"                       # holds only the pack: loading must come from it
    out = data.pack_image_folder(tree, root / data.PACK_NAME)
    assert out == root / data.PACK_NAME and not list(root.glob(".*tmp"))
    header, splits = data.read_pack(out)
    assert header["classes"] == sorted(data.DATASETS["cifar10"].classes)
    assert len(header["prefixes"]) == 1            # one encoder setting: one shared JPEG header
    total = sum(p.stat().st_size for p in tree.rglob("*.jpg"))
    assert out.stat().st_size < total              # the shared header is stored once
    spec = data.DATASETS["cifar10"]
    for split, n in zip(data.SPLITS, (20, 10)):
        files, _labels = splits[split]
        originals = sorted((tree / split).rglob("*.jpg"))
        assert len(files) == n and [f for f in files] == [p.read_bytes() for p in originals]
        ref_x, ref_y = data._load_image_folder(tree / split, spec)     # PIL, file by file
        x, y = data.load_pack(out, "cifar10", split, device="cpu")
        assert x.dtype == torch.uint8 and x.shape == (n, 3, 32, 32)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)         # same bytes decode exactly
        d = data.load_dataset("cifar10", split, root=root)             # through _load_real
        assert d.real and len(d) == n and torch.equal(d.y, ref_y)
        assert torch.equal(d.x, data._normalise(ref_x, spec))


def test_pack_cli_writes_and_reports(tmp_path, capsys):
    tree = _jpeg_tree(tmp_path / "cifar10", per_class=(1, 1))
    data._main(["pack", str(tree), str(tmp_path / "p.pack")])
    assert "10 train, 10 test images, 10 classes" in capsys.readouterr().out
    assert data.read_pack(tmp_path / "p.pack")[1]["test"][1].tolist() == list(range(10))


def test_damaged_pack_raises_naming_the_file(tmp_path):
    tree = _jpeg_tree(tmp_path / "cifar10", per_class=(1, 1))
    good = data.pack_image_folder(tree, tmp_path / "good.pack").read_bytes()
    damaged = {
        "truncated": good[:-100],
        "flipped": good[:-50] + bytes([good[-50] ^ 0xFF]) + good[-49:],
        "header": good[:20] + b"#" + good[21:],
        "foreign": b"PK\x03\x04" + good[4:],
        "empty": b"",
    }
    for name, payload in damaged.items():
        path = tmp_path / f"{name}.pack"
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=rf"{name}\.pack is not a valid mokit image pack"):
            data.load_pack(path, "cifar10", "test", device="cpu")


def test_pack_refuses_bad_folders_before_writing(tmp_path):
    out = tmp_path / "out.pack"
    with pytest.raises(ValueError, match="is not a folder"):
        data.pack_image_folder(tmp_path / "missing", out)
    tree = _jpeg_tree(tmp_path / "cifar10", per_class=(1, 1))
    (tree / "test" / "cat" / "0001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"0001\.jpg is not a JPEG file"):
        data.pack_image_folder(tree, out)
    (tree / "test" / "cat" / "0001.jpg").unlink()
    (tree / "test" / "cat").rename(tree / "test" / "kitten")
    with pytest.raises(ValueError, match=r"class folders .* differ"):
        data.pack_image_folder(tree, out)
    assert not out.exists()
    other = _jpeg_tree(tmp_path / "mnist_like", per_class=(1, 1))
    (other / "test" / "cat").rename(other / "test" / "zebra")
    (other / "train" / "cat").rename(other / "train" / "zebra")
    data.pack_image_folder(other, out)
    with pytest.raises(ValueError, match="are not cifar10's"):
        data.load_pack(out, "cifar10", "test", device="cpu")


def test_translate_matches_a_hand_written_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g)
    dy, dx = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    for mode in ("constant", "reflect"):
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode=mode)
        expected = torch.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(6)])
        assert torch.equal(data.translate(x, dy, dx, 2, mode), expected)
    assert torch.equal(data.translate(x, torch.full((6,), 2), torch.full((6,), 2), 2), x)   # centre = identity


def test_alternating_flips_show_every_image_both_ways_in_two_epochs(standin):
    d = data.load_dataset("cifar10", "train", subset=300)
    b = data.Batches(d, 64, augment="flip_translate", seed=3)
    first, second = b._epoch_offsets(), None
    b.epoch += 1
    second = b._epoch_offsets()
    assert bool((first[2] ^ second[2]).all())                   # flipped in exactly one of the two epochs
    assert 0.3 < first[2].float().mean() < 0.7
    assert int(first[0].max()) <= 4 and int(first[0].min()) >= 0 and first[3:] == (2, "reflect")


def test_augmented_batches_keep_labels_and_draw_offsets_once_per_epoch(standin, monkeypatch):
    d = data.load_dataset("cifar10", "train", subset=300)
    for augment in ("crop_flip", "flip_translate"):
        b = data.Batches(d, 64, augment=augment, seed=0)
        calls = []
        real = b._epoch_offsets
        monkeypatch.setattr(b, "_epoch_offsets", lambda real=real, calls=calls: calls.append(1) or real())
        for _ in range(2):
            ys = torch.cat([yb for _, yb in b])
            assert sorted(ys.tolist()) == sorted(d.y.tolist())
        assert len(calls) == 2                                   # one host -> device copy per epoch, not per batch
    with pytest.raises(ValueError, match="valid: none, crop_flip, flip_translate"):
        data.Batches(d, 64, augment="cutout")
