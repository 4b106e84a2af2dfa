"""The two views' augmentations: hwbench's, and the reference scripts' per data set."""

import pytest
import torch
from torchvision.transforms import InterpolationMode, v2

from hwbench.data import (
    TensorSplit,
    TwoViews,
    linear_train_transform,
    ssl_transform,
    view_transforms,
)
from hwbench.errors import UsageError

# Written here from the reference (KrishnaTarun/Unification f0fe435), not from hwbench.data:
# bash_files/pretrain/<set>/vicreg_gating.sh (--crop_size, --min_scale 0.2, --brightness 0.4
# --contrast 0.4 --saturation 0.2 --hue 0.1, --solarization_prob 0.1, --gaussian_prob per
# view), solo/args/dataset.py:67,70,71 (jitter p 0.8, grayscale p 0.2, flip p 0.5),
# solo/utils/pretrain_dataloader.py (bicubic crops; blur sigma 0.1-2; mean/std per set).
REF = {
    "cifar10": (32, (0.0, 0.0), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (32, (0.0, 0.2), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": (96, (0.0, 0.0), (0.4914, 0.4823, 0.4466), (0.247, 0.243, 0.261)),
    "imagenet100": (224, (0.0, 0.0), (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)),
}


def ops(t):
    return list(t.transforms)


def one(t, cls):
    """The single op of type ``cls`` in ``t`` (looking inside RandomApply), with its p."""
    found = []
    for op in ops(t):
        if isinstance(op, cls):
            found.append((op, getattr(op, "p", 1.0)))
        elif isinstance(op, v2.RandomApply):
            found += [(inner, op.p) for inner in op.transforms if isinstance(inner, cls)]
    assert len(found) <= 1
    return found[0] if found else (None, 0.0)


@pytest.mark.parametrize("name", REF)
def test_reference_views_have_the_scripts_values(name):
    crop, blur_p, mean, std = REF[name]
    for view, t in enumerate(view_transforms(name, "reference")):
        rrc, _ = one(t, v2.RandomResizedCrop)
        assert rrc.size == (crop, crop) and rrc.scale == (0.2, 1.0)
        assert rrc.interpolation == InterpolationMode.BICUBIC
        jitter, p = one(t, v2.ColorJitter)
        assert p == 0.8
        assert jitter.brightness == pytest.approx((0.6, 1.4))
        assert jitter.contrast == pytest.approx((0.6, 1.4))
        assert jitter.saturation == pytest.approx((0.8, 1.2))
        assert jitter.hue == pytest.approx((-0.1, 0.1))
        assert one(t, v2.RandomGrayscale)[1] == 0.2
        blur, p = one(t, v2.GaussianBlur)
        assert p == blur_p[view]
        if blur is not None:
            assert list(blur.sigma) == pytest.approx([0.1, 2.0])
        sol, p = one(t, v2.RandomSolarize)
        assert p == 0.1 and sol.threshold == 128
        assert one(t, v2.RandomHorizontalFlip)[1] == 0.5
        norm, _ = one(t, v2.Normalize)
        assert tuple(norm.mean) == pytest.approx(mean) and tuple(norm.std) == pytest.approx(std)
        # the reference's order: crop, jitter, grayscale, blur, solarise, flip, normalise
        kinds = [type(op.transforms[0] if isinstance(op, v2.RandomApply) else op).__name__
                 for op in ops(t)]
        order = [k for k in kinds if k in ("RandomResizedCrop", "ColorJitter", "RandomGrayscale",
                                           "GaussianBlur", "RandomSolarize",
                                           "RandomHorizontalFlip", "Normalize")]
        assert order == ["RandomResizedCrop", "ColorJitter", "RandomGrayscale"] + (
            ["GaussianBlur"] if blur_p[view] else []) + [
            "RandomSolarize", "RandomHorizontalFlip", "Normalize"]


def test_cifar100_views_differ_only_in_blur_and_run_on_images():
    t1, t2 = view_transforms("cifar100", "reference")
    assert one(t1, v2.GaussianBlur)[0] is None and one(t2, v2.GaussianBlur)[1] == 0.2
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    ds = TwoViews(TensorSplit(x, torch.arange(8)), t1, t2)
    a, b, y = ds[3]
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32 and y == 3
    assert type(a) is torch.Tensor  # plain tensors: batches stack as before
    # view 1 gets the first transform, view 2 the second
    a, b, _ = TwoViews(TensorSplit(x, torch.arange(8)), lambda im: im.float(),
                       lambda im: -im.float())[5]
    assert torch.equal(a, x[5].float()) and torch.equal(b, -x[5].float())


def test_hwbench_views_are_ssl_transform_twice_and_unknown_names_fail():
    t1, t2 = view_transforms("mnist5k", "hwbench")
    assert t1 is t2 and repr(t1) == repr(ssl_transform("mnist5k"))
    ds = TwoViews(TensorSplit(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2)), t1)
    assert ds.transform2 is t1
    with pytest.raises(UsageError, match="no recipe for mnist5k.*use --views hwbench"):
        view_transforms("mnist5k", "reference")
    with pytest.raises(UsageError, match="--views must be one of hwbench, reference"):
        view_transforms("cifar10", "simclr")


def test_linear_train_crops():
    t = linear_train_transform("cifar10")
    rrc, _ = one(t, v2.RandomResizedCrop)
    assert rrc.scale == (0.08, 1.0) and one(t, v2.RandomHorizontalFlip)[1] == 0.5
    assert one(linear_train_transform("mnist5k"), v2.RandomHorizontalFlip)[0] is None
    out = t(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
