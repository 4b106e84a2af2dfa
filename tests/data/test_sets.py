import pytest
import torch

from hwbench.data import (
    DATASETS,
    INFO,
    TensorSplit,
    TwoViews,
    auto_workers,
    eval_batches,
    info,
    load_split,
    load_tensors,
    normalise,
    ssl_transform,
)
from hwbench.errors import UsageError


@pytest.mark.slow
def test_mnist5k_is_real_fixed_and_stratified():
    xtr, ytr = load_tensors("mnist5k", train=True)
    xte, yte = load_tensors("mnist5k", train=False)
    assert xtr.shape == (4000, 3, 32, 32) and xte.shape == (1000, 3, 32, 32)
    assert xtr.dtype == torch.uint8 and xtr.max() > 200
    assert torch.bincount(yte).tolist() == [100] * 10
    again, _ = load_tensors("mnist5k", train=False)
    assert torch.equal(again, xte)


def test_digits_and_synthetic():
    x, y = load_tensors("digits", train=True)
    assert x.shape[1:] == (3, 32, 32) and len(x) == len(y) > 1400 and y.max() == 9
    s, sy = load_tensors("synthetic", train=True, n_synthetic=64)
    assert s.shape == (64, 3, 32, 32) and sy.max() < 4


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10", "imagenet100"])
def test_file_backed_sets_give_clear_errors_without_files(name):
    with pytest.raises(UsageError, match=f"{name} needs --data-dir"):
        load_split(name, "train")


def test_missing_dirs_are_clear(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_tensors("cifar10", train=True, data_dir=str(tmp_path / "nope"))
    with pytest.raises(UsageError, match="no cifar-10-batches-py/data_batch_1 under"):
        load_tensors("cifar10", train=True, data_dir=str(tmp_path))
    with pytest.raises(UsageError, match="no folder"):
        load_split("imagenet100", "train", data_dir=str(tmp_path))
    with pytest.raises(UsageError, match="unknown dataset"):
        info("mnist60k")


def test_two_views_differ_and_eval_batches_are_normalised_in_order():
    x, y = load_tensors("synthetic", train=True, n_synthetic=8)
    torch.manual_seed(0)
    v1, v2, label = TwoViews(TensorSplit(x, y), ssl_transform("synthetic"))[0]
    assert v1.shape == v2.shape == (3, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2) and label == y[0]
    batches = list(eval_batches(TensorSplit(x, y), "synthetic", batch=3))
    assert [len(b[1]) for b in batches] == [3, 3, 2]
    got = torch.cat([b[0] for b in batches])
    mean, std = INFO["synthetic"].mean[1], INFO["synthetic"].std[1]
    assert torch.allclose(got[:, 1], (x[:, 1].float() / 255 - mean) / std)
    assert torch.equal(got, normalise(x, "synthetic"))


def test_auto_workers():
    assert auto_workers(False, cpus=64) == 0  # in memory: today's loop, no workers
    assert auto_workers(True, cpus=2) == 1 and auto_workers(True, cpus=1) == 1
    assert auto_workers(True, world=2, cpus=16) == 7 and auto_workers(True, cpus=64) == 8


def test_every_dataset_has_info():
    assert all(info(n).num_classes > 1 for n in DATASETS)


def test_digits_get_a_digit_recipe_without_flips_and_cifar_keeps_the_reference_one():
    def names(t):
        return {type(op).__name__ for op in t.transforms}

    digit, cifar = names(ssl_transform("mnist5k")), names(ssl_transform("cifar10"))
    assert "RandomHorizontalFlip" not in digit and "RandomAffine" in digit
    assert {"RandomHorizontalFlip", "RandomGrayscale", "RandomSolarize"} <= cifar
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    v = ssl_transform("mnist5k")(x)
    assert v.shape == (3, 32, 32) and v.dtype == torch.float32
