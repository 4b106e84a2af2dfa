"""The augmentations: the two views of the SSL pre-training (hwbench's and the reference's),
the digit sets' own views, evaluation and linear-probe transforms."""

from __future__ import annotations

import torch

from hwbench.data.sets import CIFAR100_MEAN, CIFAR100_STD, STL10_MEAN, STL10_STD, info
from hwbench.errors import UsageError


def ssl_transform(name: str, size: int | None = None):
    """One random view, as the reference recipes: random resized crop (min scale 0.2 for
    32-px sets, 0.08 with blur for the larger ones), colour jitter (0.4, 0.4, 0.2, 0.1; p 0.8),
    grayscale (p 0.2), solarisation (p 0.1), horizontal flip; then normalisation. The digit
    sets (mnist5k, digits) get ``digit_transform`` instead."""
    from torchvision.transforms import v2  # ~2 s to import: only runs that augment need it

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
    from torchvision.transforms import v2  # ~2 s to import: only runs that augment need it

    meta = info(name)
    size = size or meta.input_size
    return v2.Compose([
        v2.RandomAffine(degrees=15, translate=(0.1, 0.1), shear=10),
        v2.RandomResizedCrop(size, scale=(0.4, 1.0), ratio=(0.8, 1.25), antialias=True),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4)], p=0.8),
        v2.RandomApply([v2.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize(meta.mean, meta.std)])


def eval_transform(name: str, size: int | None = None):
    from torchvision.transforms import v2  # ~2 s to import: only runs that augment need it

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
_COMMON = {"min_scale": 0.2, "max_scale": 1.0, "jitter": (0.4, 0.4, 0.2, 0.1), "jitter_p": 0.8,
           "grayscale_p": 0.2, "solarize_p": 0.1, "flip_p": 0.5, "blur_sigma": (0.1, 2.0),
           "interpolation": "bicubic"}
REFERENCE_VIEWS = {
    "cifar10": {**_COMMON, "crop": 32, "blur_p": (0.0, 0.0),
                "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
                "source": "bash_files/pretrain/cifar10/vicreg_gating.sh:30-38; "
                          "solo/utils/pretrain_dataloader.py:219-220 (mean/std)"},
    "cifar100": {**_COMMON, "crop": 32, "blur_p": (0.0, 0.2),
                 "mean": CIFAR100_MEAN, "std": CIFAR100_STD,
                 "source": "bash_files/pretrain/cifar100/vicreg_gating.sh:31-39; "
                           "solo/utils/pretrain_dataloader.py:222-223 (mean/std)"},
    "stl10": {**_COMMON, "crop": 96, "blur_p": (0.0, 0.0),
              "mean": STL10_MEAN, "std": STL10_STD,
              "source": "bash_files/pretrain/stl10/vicreg_gating.sh:33-41; "
                        "solo/utils/pretrain_dataloader.py:324 (mean/std)"},
    "imagenet100": {**_COMMON, "crop": 224, "blur_p": (0.0, 0.0),
                    "mean": (0.485, 0.456, 0.406), "std": (0.228, 0.224, 0.225),
                    "source": "bash_files/pretrain/imagenet100/vicreg_gating.sh:33-41; "
                              "solo/utils/pretrain_dataloader.py:383 (mean/std)"},
}
# The lines that name each value in cifar100.sh: min scale :32, jitter :33-36, solarisation
# :37, blur :38; jitter/grayscale/flip p are defaults (solo/args/dataset.py:67,70,71); bicubic:
# solo/utils/pretrain_dataloader.py:231.
VIEWS = ("hwbench", "reference")
BLUR_KERNEL = 13  # odd, >= 6 sigma_max + 1: the reference blurs with PIL's radius=sigma filter


def reference_view_transform(name: str, view: int):
    """View ``view`` (1 or 2) of the reference's pre-training pipeline for data set ``name``
    (``REFERENCE_VIEWS``), on uint8 (3, H, W) tensors or PIL images."""
    from torchvision.transforms import (  # ~2 s to import: only runs that augment need it
        InterpolationMode,
        v2,
    )

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
    106-107), then hwbench's evaluation normalisation (``normalise``'s, which the test
    features get too). The digit sets keep the crop and drop the flip (``digit_transform``)."""
    from torchvision.transforms import v2  # ~2 s to import: only runs that augment need it

    meta = info(name)
    size = size or meta.input_size
    ops = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True)]
    if name not in DIGIT_SETS:
        ops.append(v2.RandomHorizontalFlip())
    return v2.Compose(ops + [v2.ToDtype(torch.float32, scale=True),
                             v2.Normalize(meta.mean, meta.std)])
