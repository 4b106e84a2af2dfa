"""--recipe paper: the reference's values with their sources, explicit flags override, and the
schedule, downsample BN and VICReg settings it brings."""

import math
import re

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.train.config import TrainConfig
from hwbench.train.recipe import resolve_recipe
from hwbench.train.schedule import lr_at
from tests.conftest import one_line_error, run_cli

# Written by hand from KrishnaTarun/Unification@f0fe435, bash_files/pretrain/<ds>/vicreg_gating.sh
# (not imported from hwbench.train.recipe): option -> (value, line) per data set. The global batch
# is --batch_size (per GPU) x the two GPUs of --gpus 0,1; the warm-up values are
# solo/methods/base_gating.py's defaults (no script sets them).
SCRIPTS = {
    "cifar10": {"epochs": (500, 15), "gpus": (2, 16), "lr": (0.3, 26), "wd": (1e-4, 27),
                "batch": (256, 28), "eta": (0.02, 24), "lam": (5.0, 44), "gamma": (1.0, 45),
                "alpha": (0.02, 46), "precision": (16, 19)},
    "cifar100": {"epochs": (500, 16), "gpus": (2, 17), "lr": (0.3, 27), "wd": (1e-4, 28),
                 "batch": (256, 29), "eta": (0.02, 24), "lam": (5.0, 45), "gamma": (1.0, 46),
                 "alpha": (0.02, 47), "precision": (16, 20)},
    "stl10": {"epochs": (500, 17), "gpus": (2, 18), "lr": (0.3, 29), "wd": (1e-4, 30),
              "batch": (256, 31), "eta": (0.02, 25), "lam": (5.0, 47), "gamma": (1.0, 48),
              "alpha": (0.02, 49), "precision": (16, 21)},
    "imagenet100": {"epochs": (500, 17), "gpus": (2, 18), "lr": (0.3, 29), "wd": (1e-4, 30),
                    "batch": (256, 31), "eta": (0.02, 25), "lam": (5.0, 47),
                    "gamma": (1.0, 48), "alpha": (0.02, 49), "precision": (16, 21)},
}
FIELD = {"epochs": "epochs", "lr": "lr", "wd": "weight_decay", "eta": "eta", "lam": "lam",
         "gamma": "gamma", "alpha": "alpha"}
ROW = re.compile(r"^  (\w+)\s+(\S.*?)\s{2,}(flag|reference|preset|default)\b(.*)$")


def dry_run(*args):
    result = run_cli("train", "--dry-run", *args)
    assert result.exit_code == 0, result.output
    rows = {}
    for line in result.output.splitlines():
        m = ROW.match(line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows, result.output


@pytest.mark.parametrize("ds", list(SCRIPTS))
def test_paper_recipe_dry_run_shows_the_reference_scripts_values(ds):
    rows, out = dry_run("--recipe", "paper", "--dataset", ds)
    script = f"{ds}.sh"
    for key, field in FIELD.items():
        value, line = SCRIPTS[ds][key]
        shown, kind, where = rows[field]
        assert float(shown) == pytest.approx(value), (ds, field, shown)
        assert kind == "reference" and f"{script}:{line}" in where, (ds, field, where)
    batch, gpus = SCRIPTS[ds]["batch"], SCRIPTS[ds]["gpus"]
    shown, kind, where = rows["batch_size"]
    assert int(shown) == batch[0] * gpus[0] == 512 and kind == "reference"
    assert f"{script}:{batch[1]}" in where and f"{script}:{gpus[1]}" in where
    assert "0.6" in rows["lr"][2]  # the peak: 0.3 x 512 / 256
    assert rows["warmup_epochs"][:2] == ("10", "reference")
    assert rows["warmup_start_lr"][:2] == ("0.003", "reference")
    assert rows["schedule"][:2] == ("reference", "reference")
    assert rows["shared_downsample_bn"][:2] == ("True", "reference")
    assert rows["vicreg_gather"][:2] == ("False", "reference")
    assert rows["proj_dims"][:2] == ("2048,2048,2048", "reference")
    assert rows["views"][:2] == ("reference", "reference")
    assert rows["knn"][:2] == ("reference", "preset")
    # fp16 needs CUDA: on this CPU the preset says so and takes auto
    assert rows["amp"][:2] == ("auto", "preset")
    assert f"{script}:{SCRIPTS[ds]['precision'][1]}" in rows["amp"][2]
    assert rows["t_d"][1] == "default"  # the reference sweeps it
    assert f"bash_files/pretrain/{ds}/vicreg_gating.sh" in out


def test_explicit_flags_override_the_recipe_and_say_so():
    rows, _ = dry_run("--recipe", "paper", "--dataset", "cifar100", "--lr", "0.1",
                      "--epochs", "3", "--separate-downsample-bn", "--bound-alpha", "0.05")
    assert rows["lr"] == ("0.1", "flag", ": --lr")
    assert rows["epochs"] == ("3", "flag", ": --epochs")
    assert rows["shared_downsample_bn"] == ("False", "flag", ": --separate-downsample-bn")
    assert rows["alpha"] == ("0.05", "flag", ": --bound-alpha")
    assert rows["batch_size"][1] == "reference"  # the rest stays the recipe's


def test_dry_run_without_a_recipe_shows_hwbench_defaults():
    rows, out = dry_run("--dataset", "cifar10")
    assert {kind for _, kind, _ in rows.values()} == {"default"}
    assert rows["epochs"][0] == "10" and rows["batch_size"][0] == "128"
    assert rows["schedule"][0] == "hwbench" and rows["lr"][0] == "auto"
    assert rows["shared_downsample_bn"][0] == "True" and rows["vicreg_gather"][0] == "False"
    assert "no --recipe" in out
    rows, _ = dry_run("--batch-size", "64")
    assert rows["batch_size"] == ("64", "flag", ": --batch-size")


def test_bad_recipe_or_data_set_is_one_line():
    assert "--recipe" in one_line_error(run_cli("train", "--recipe", "fast", "--dry-run"))
    line = one_line_error(run_cli("train", "--recipe", "paper", "--dataset", "mnist5k",
                                  "--dry-run"))
    assert "cifar10, cifar100, stl10, imagenet100" in line
    with pytest.raises(UsageError, match="unknown recipe"):
        resolve_recipe("fast", "cifar10", {})


def test_resolve_keeps_fp16_on_cuda_and_reports_every_field():
    values, sources = resolve_recipe("paper", "cifar10", {"device": "cuda"})
    assert values["amp"] == "fp16" and sources["amp"].kind == "reference"
    values, sources = resolve_recipe("paper", "cifar10", {"amp": "off"})
    assert values["amp"] == "off" and sources["amp"].kind == "flag"
    assert set(values) == set(sources)


def test_help_says_which_defaults_differ_from_the_paper():
    out = run_cli("train", "--help").output
    for needle in ("--recipe", "--dry-run", "500", "512", "--schedule", "2 cores"):
        assert needle in out, needle


def test_reference_schedule_matches_hand_computed_values():
    # 0.3 x 512 / 256 = 0.6 peak; 10 warm-up epochs from 0.003; 500 epochs; per epoch
    cfg = TrainConfig(schedule="reference", lr=0.3, batch_size=512, epochs=500,
                      warmup_epochs=10, warmup_start_lr=0.003)
    spe = 7
    by_epoch = {e: lr_at(cfg, e * spe, spe) for e in (0, 1, 5, 9, 10, 11, 255, 499)}
    assert by_epoch[0] == pytest.approx(0.003)
    assert by_epoch[1] == pytest.approx(0.003 + (0.6 - 0.003) / 9)
    assert by_epoch[5] == pytest.approx(0.003 + 5 * 0.597 / 9)
    assert by_epoch[9] == pytest.approx(0.6) and by_epoch[10] == pytest.approx(0.6)
    assert by_epoch[11] == pytest.approx(0.3 * (1 + math.cos(math.pi / 490)))
    assert by_epoch[255] == pytest.approx(0.3)  # halfway through the cosine
    assert by_epoch[499] == pytest.approx(0.3 * (1 + math.cos(math.pi * 489 / 490)))
    # constant within an epoch
    assert {lr_at(cfg, 5 * spe + s, spe) for s in range(spe)} == {by_epoch[5]}


def test_hwbench_schedule_is_unchanged_by_the_reference_fields():
    cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=0.3, batch_size=256, warmup_start_lr=0.1)
    assert lr_at(cfg, 0, 10) == pytest.approx(0.03)  # per step from 0: 0.3 x 1/10


def test_bad_schedule_is_refused():
    from hwbench.train.config import validate

    with pytest.raises(UsageError, match="--schedule"):
        validate(TrainConfig(schedule="linear"))


def test_per_rank_vicreg_does_not_gather_and_gather_does(monkeypatch):
    import hwbench.ssl.model as model_mod
    from hwbench.nets import create_net
    from hwbench.ssl.model import CoTrainStep, SSLModel

    calls = []

    def fake_gather(z):  # a world of two in which the other rank holds the same rows
        calls.append(z.shape[0])
        return torch.cat([z, z])

    monkeypatch.setattr(model_mod, "gather", fake_gather)
    torch.manual_seed(0)
    model = SSLModel(create_net("resnet18"), proj_dims=(32, 32, 16)).train()
    x = torch.randn(4, 3, 16, 16)
    CoTrainStep("co")(model, x, x + 0.1, p=1.0)
    assert calls == []  # the default, the reference's: each rank's own batch
    CoTrainStep("co", vicreg_gather=True)(model, x, x + 0.1, p=1.0)
    assert calls == [4, 4]


def test_a_checkpoint_from_before_shared_downsample_bn_loads_its_own_architecture(tmp_path):
    from hwbench.nets import create_net
    from hwbench.ssl.model import SSLModel
    from hwbench.train.evaluation import load_run

    torch.manual_seed(0)
    old_net = create_net("resnet18", shared_downsample_bn=False)  # what hwbench built then
    with torch.no_grad():
        old_net.layer2[0].downsample.bn.gated.running_mean.uniform_()
    model = SSLModel(old_net, proj_dims=(32, 32, 16))
    config = {"arch": "resnet18", "dataset": "synthetic", "method": "co", "t_d": 0.5,
              "gate": "channel", "widths": None}  # no shared_downsample_bn key
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "config": config, "epoch": 0}, path)
    net, cfg, _ = load_run(path)  # strict: any key of the other architecture would fail
    assert not net.shared_downsample_bn
    assert torch.equal(net.layer2[0].downsample.bn.gated.running_mean,
                       old_net.layer2[0].downsample.bn.gated.running_mean)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(net(x, stream="gated"), old_net.eval()(x, stream="gated"))


@pytest.mark.slow
def test_resuming_a_checkpoint_from_before_issue_15_names_the_flag_it_needs(tmp_path):
    from hwbench.train.config import CHECKPOINT
    from hwbench.train.loop import train
    from tests.train.test_train import TINY

    cfg = dict(TINY, epochs=1, out=str(tmp_path / "r"), models_dir=str(tmp_path / "m"),
               schedule="reference", warmup_epochs=0)
    train(TrainConfig(**cfg))
    path = tmp_path / "r" / CHECKPOINT
    ck = torch.load(path, weights_only=False)
    assert ck["config"]["schedule"] == "reference"
    for key in ("shared_downsample_bn", "vicreg_gather", "schedule", "warmup_start_lr"):
        del ck["config"][key]  # as an older hwbench wrote it
    torch.save(ck, path)
    with pytest.raises(UsageError, match="schedule='hwbench'.*--schedule"):
        train(TrainConfig(**cfg, resume=True))
    with pytest.raises(UsageError, match="shared_downsample_bn=False.*--separate-downsample-bn"):
        train(TrainConfig(**{**cfg, "schedule": "hwbench"}, resume=True))
