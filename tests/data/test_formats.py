"""The file-backed data sets on tiny files written here in their real on-disk formats: the
python pickle batches of CIFAR-10/100, STL-10's binary files (with its ``unlabeled`` split) and
an ImageFolder of PNGs. Each is read as torchvision reads it (its integrity check, an MD5 of the
real archive, is switched off for the tiny files), trains one step and is evaluated by kNN; bad
or missing files give one-line errors naming the file expected."""

import json
import pickle
import re

import numpy as np
import pytest
import torch

from hwbench.data import check_files, load_split, sample_images
from hwbench.errors import UsageError
from hwbench.train.config import TrainConfig
from hwbench.train.loop import train
from tests.conftest import one_line_error, run_cli

ONE_STEP = dict(batch_size=4, epochs=1, max_steps_per_epoch=1, proj_dims=(32, 32, 16),
                energy=False, eval_initial=False)


def _pickle(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _rgb(rng, n: int, side: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3, side, side), dtype=np.uint8)


def write_cifar10(root, n_per_batch: int = 3, n_test: int = 6, seed: int = 0) -> dict:
    """cifar-10-batches-py/: data_batch_1..5, test_batch (dicts of ``data`` (N, 3072) uint8
    and ``labels``) and batches.meta. Returns the images and labels written."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    written = {"train": [], "test": []}
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch",
                                                                               n_test)]:
        x, y = _rgb(rng, n, 32), rng.integers(0, 10, n).tolist()
        _pickle(d / name, {"batch_label": name, "labels": y, "data": x.reshape(n, -1),
                           "filenames": [f"{name}_{i}.png" for i in range(n)]})
        written["test" if name == "test_batch" else "train"].append((x, y))
    _pickle(d / "batches.meta", {"label_names": [f"c{i}" for i in range(10)],
                                 "num_cases_per_batch": n_per_batch, "num_vis": 3072})
    return {k: (np.concatenate([x for x, _ in v]), sum((y for _, y in v), []))
            for k, v in written.items()}


def write_cifar100(root, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict:
    """cifar-100-python/: train, test (``data``, ``fine_labels``, ``coarse_labels``) and meta."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    written = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x, y = _rgb(rng, n, 32), rng.integers(0, 100, n).tolist()
        _pickle(d / name, {"filenames": [f"{i}.png" for i in range(n)], "batch_label": name,
                           "fine_labels": y, "coarse_labels": [v // 5 for v in y],
                           "data": x.reshape(n, -1)})
        written[name] = (x, y)
    _pickle(d / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                         "coarse_label_names": [f"c{i}" for i in range(20)]})
    return written


def write_stl10(root, n_train: int = 10, n_test: int = 6, n_unlabeled: int = 9,
                seed: int = 0) -> dict:
    """stl10_binary/: {train,test,unlabeled}_X.bin (each 3x96x96 image channel by channel,
    each channel column-major), {train,test}_y.bin (labels 1..10), class_names.txt,
    fold_indices.txt. Returns the images (N, 3, 96, 96, row-major) and 0-based labels."""
    rng = np.random.default_rng(seed)
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    written = {}
    for name, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unlabeled)):
        x = _rgb(rng, n, 96)
        (d / f"{name}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2))
                                          .tobytes())
        y = rng.integers(0, 10, n)
        if name != "unlabeled":
            (d / f"{name}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
        written[name] = (x, y)
    (d / "class_names.txt").write_text("".join(f"class{i}\n" for i in range(10)))
    (d / "fold_indices.txt").write_text("".join(
        " ".join(str(j) for j in range(i % n_train, n_train, 3)) + "\n" for i in range(10)))
    return written


def write_image_folder(root, classes=("ant", "bee", "cat"), per_class=(3, 2),
                       side: tuple[int, int] = (40, 30)) -> None:
    """train/<class>/*.png and val/<class>/*.png, ``side`` (width, height) px, each class a
    different colour."""
    from PIL import Image

    for part, n in zip(("train", "val"), per_class):
        for c, cls in enumerate(classes):
            (root / part / cls).mkdir(parents=True)
            for i in range(n):
                colour = (80 * c, 255 - 60 * c, 20 * i)
                Image.new("RGB", side, colour).save(root / part / cls / f"{i}.png")


def _train_once(tmp_path, dataset: str, data_dir, **kw) -> dict:
    return train(TrainConfig(dataset=dataset, data_dir=str(data_dir), out=str(tmp_path / "run"),
                             models_dir=str(tmp_path / "models"), **{**ONE_STEP, **kw}))


def _torchvision_reads(monkeypatch, cls, **kw):
    import sys

    # the MD5s of the real archives' files: not these tiny ones'
    monkeypatch.setattr(sys.modules[cls.__module__], "check_integrity", lambda *a, **k: True)
    return cls(**kw)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_the_python_batches_as_torchvision_does(tmp_path, monkeypatch, name):
    import torchvision

    written = (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path)
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    for part, train_flag in (("train", True), ("test", False)):
        split = load_split(name, part, data_dir=str(tmp_path))
        tv = _torchvision_reads(monkeypatch, cls, root=str(tmp_path), train=train_flag)
        assert torch.equal(split.images, torch.from_numpy(tv.data).permute(0, 3, 1, 2))
        assert split.labels.tolist() == tv.targets == list(written[part][1])
        assert torch.equal(split.images, torch.from_numpy(written[part][0]))
    assert len(load_split(name, "ssl", data_dir=str(tmp_path))) == len(written["train"][1])


def test_stl10_reads_the_binary_files_as_torchvision_does(tmp_path, monkeypatch):
    import torchvision

    written = write_stl10(tmp_path)
    for part in ("train", "test", "unlabeled"):
        split = load_split("stl10", "ssl" if part == "unlabeled" else part,
                           data_dir=str(tmp_path))
        tv = _torchvision_reads(monkeypatch, torchvision.datasets.STL10, root=str(tmp_path),
                                split=part)
        images = torch.stack([split[i][0] for i in range(len(split))])
        assert torch.equal(images, torch.from_numpy(tv.data))
        assert torch.equal(images, torch.from_numpy(written[part][0]))
        assert split.labels.tolist() == tv.labels.tolist()
        want = [-1] * len(images) if part == "unlabeled" else written[part][1].tolist()
        assert split.labels.tolist() == want


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_trains_one_step_and_evaluates(tmp_path, name):
    (write_cifar10 if name == "cifar10" else write_cifar100)(tmp_path / "data")
    summary = _train_once(tmp_path, name, tmp_path / "data")
    final = summary["final"]
    assert 0 <= final["knn_top1_dense"] <= 100 and 0 <= final["knn_top1_gated"] <= 100
    assert final["knn_test_n"] == 6 and 0 < final["eval_macs_ratio"] <= 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["workers"] == 0


def test_stl10_pretrains_on_unlabeled_and_evaluates_on_the_labelled_splits(tmp_path,
                                                                           monkeypatch):
    from hwbench.train import loop as tr  # where the loop reads evaluate

    write_stl10(tmp_path / "data", n_train=10, n_test=6, n_unlabeled=13)
    seen, real = [], tr.evaluate

    def spy(model, cfg, train_split, test_split, device):
        seen.append((len(train_split), train_split.labels.min().item(), len(test_split)))
        return real(model, cfg, train_split, test_split, device)

    monkeypatch.setattr(tr, "evaluate", spy)
    steps = []
    cfg = TrainConfig(dataset="stl10", data_dir=str(tmp_path / "data"), out=str(tmp_path / "r"),
                      models_dir=str(tmp_path / "m"), **{**ONE_STEP, "max_steps_per_epoch": None,
                                                         "method": "dense"})
    summary = train(cfg, progress=lambda state: steps.append(state["steps"]))
    assert steps == [3, 3, 3]  # 13 unlabeled images at batch 4 (the 10 labelled would give 2)
    assert seen == [(10, 0, 6)]  # the kNN bank: the 10 labelled training images, not -1s
    assert summary["final"]["knn_test_n"] == 6
    assert summary["config"]["workers"] >= 1  # auto: the unlabeled split is read from disk


@pytest.mark.slow
def test_image_folder_streams_resized_images_and_trains(tmp_path):
    write_image_folder(tmp_path / "data", side=(40, 30))
    split = load_split("imagenet100", "train", data_dir=str(tmp_path / "data"), size=24)
    assert len(split) == 9 and split.lazy and split.labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    x, y = split[4]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and y == 1
    assert x[:, 12, 12].tolist() == [80, 195, 20]  # class 1's colour, image 1, after resizing
    full = load_split("imagenet100", "test", data_dir=str(tmp_path / "data"))
    assert full[0][0].shape == (3, 224, 224) and full.labels.tolist() == [0, 0, 1, 1, 2, 2]
    images, record = sample_images("imagenet100", False, 3, data_dir=str(tmp_path / "data"))
    assert images.shape == (3, 3, 224, 224) and record["class_counts"] == {"0": 1, "1": 1,
                                                                           "2": 1}
    summary = _train_once(tmp_path, "imagenet100", tmp_path / "data", workers=1,
                          method="dense")
    assert summary["final"]["knn_test_n"] == 6 and 0 <= summary["final"]["knn_top1_dense"] <= 100


def test_folder_images_keep_the_central_square(tmp_path):
    from PIL import Image

    from hwbench.data import FolderSplit

    a = np.zeros((30, 90, 3), dtype=np.uint8)  # thirds: red, green, blue
    a[:, :30, 0], a[:, 30:60, 1], a[:, 60:, 2] = 255, 255, 255
    Image.fromarray(a).save(tmp_path / "wide.png")
    x, _ = FolderSplit([(str(tmp_path / "wide.png"), 0)], 15)[0]
    assert x.shape == (3, 15, 15)  # 90 x 30 -> 45 x 15, then the central 15 x 15: green
    assert (x[1, :, 2:13] == 255).all() and (x[0, :, 2:13] == 0).all() and (x[2] < 128).all()


def test_cifar10_trains_through_the_cli(tmp_path):
    write_cifar10(tmp_path / "data")
    r = run_cli("train", "--dataset", "cifar10", "--data-dir", tmp_path / "data", "--method",
                "dense", "--epochs", 1, "--batch-size", 4, "--max-steps-per-epoch", 1,
                "--no-energy", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final"]
    assert final["knn_test_n"] == 6 and 0 <= final["knn_top1_dense"] <= 100


def _break(tmp_path, what: str):
    """A data dir with one thing wrong; returns (dataset, data dir, text the error names)."""
    d = tmp_path / what
    d.mkdir()
    if what.startswith("cifar10-"):
        write_cifar10(d)
        bad = d / "cifar-10-batches-py" / "data_batch_3"
        if what == "cifar10-missing":
            bad.unlink()
            return "cifar10", d, "no cifar-10-batches-py/data_batch_3 under"
        bad.write_bytes(b"\x80\x02 truncated")
        return "cifar10", d, f"{bad} is not a CIFAR python batch"
    if what == "cifar100-missing":
        write_cifar100(d)
        (d / "cifar-100-python" / "test").unlink()
        return "cifar100", d, "no cifar-100-python/test under"
    if what.startswith("stl10"):
        write_stl10(d)
        if what == "stl10-missing":
            (d / "stl10_binary" / "unlabeled_X.bin").unlink()
            return "stl10", d, "no stl10_binary/unlabeled_X.bin under"
        (d / "stl10_binary" / "test_y.bin").write_bytes(b"\x01\x02")
        return "stl10", d, "test_y.bin holds 2 labels"
    write_image_folder(d)
    if what == "folder-val":
        for f in (d / "val").rglob("*.png"):
            f.unlink()
        for c in (d / "val").iterdir():
            c.rmdir()
        return "imagenet100", d, "hold different class folders"
    (d / "train" / "ant" / "0.png").write_bytes(b"not a png")
    return "imagenet100", d, "0.png: not a readable image"


@pytest.mark.parametrize("what", ["cifar10-missing", "cifar10-corrupt", "cifar100-missing",
                                  "stl10-missing", "stl10-labels", "folder-val",
                                  "folder-corrupt"])
def test_bad_or_missing_files_give_one_line_errors_naming_them(tmp_path, what):
    dataset, d, needle = _break(tmp_path, what)
    if "missing" in what or what == "folder-val":  # found by names alone, before any loading
        with pytest.raises(UsageError, match=re.escape(needle)):
            check_files(dataset, str(d))
    with pytest.raises(UsageError, match=re.escape(needle)):
        _train_once(tmp_path, dataset, d)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    line = one_line_error(run_cli("train", "--dataset", dataset, "--data-dir", d, "--epochs", 1,
                                  "--no-energy", "--out", tmp_path / "cli"))
    assert needle in line, line
