import json

import pytest
import torch

from hwbench.errors import UsageError
from hwbench.pattern.gate_pattern import load_pattern
from hwbench.train.config import CHECKPOINT, TrainConfig
from hwbench.train.loop import train
from hwbench.train.schedule import lr_at
from tests.conftest import one_line_error as _one_line
from tests.conftest import run_cli as _cli

TINY = dict(dataset="synthetic", n_synthetic=64, batch_size=16, proj_dims=(32, 32, 16),
            max_steps_per_epoch=2, eval_every=1, energy=False)


@pytest.mark.slow
def test_a_tiny_co_training_run_writes_everything(tmp_path):
    cfg = TrainConfig(**TINY, epochs=2, out=str(tmp_path / "run"),
                      models_dir=str(tmp_path / "models"), t_d=0.4)
    summary = train(cfg)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert {"loss", "vicreg", "sparsity", "bound", "macs_ratio", "knn_top1_dense",
            "knn_top1_gated", "images_per_s", "eval_macs_ratio"} <= set(rows[-1])
    assert 0 < rows[-1]["eval_macs_ratio"] <= 1
    assert (run / CHECKPOINT).exists() and (run / "config.json").exists()
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "knn_top1_gated" in csv_lines[0]
    assert {"knn_top1_dense", "knn_top1_gated"} <= set(summary["initial"])
    assert rows[-1]["knn_test_n"] == 64  # the synthetic test split
    pattern = load_pattern(tmp_path / "models" / "run.json")
    assert pattern.t_d == 0.4 and pattern.extra["dataset"] == "synthetic"
    assert summary["final"]["epoch"] == 1


def test_top1_standard_error():
    from hwbench.train.evaluation import top1_se

    assert top1_se(90.0, 1000) == pytest.approx(100 * (0.9 * 0.1 / 1000) ** 0.5)
    assert top1_se(100.0, 50) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])  # 1: the views come from a DataLoader worker
def test_ctrl_c_leaves_a_checkpoint_and_resume_reproduces_the_loss_curve(tmp_path, workers):
    full = TrainConfig(**TINY, epochs=3, out=str(tmp_path / "full"),
                       models_dir=str(tmp_path / "m"), workers=workers)
    train(full)
    part = TrainConfig(**TINY, epochs=3, out=str(tmp_path / "part"),
                       models_dir=str(tmp_path / "m"), workers=workers)

    def interrupt(state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(part, progress=interrupt)
    assert torch.load(tmp_path / "part" / CHECKPOINT, weights_only=False)["epoch"] == 1
    train(TrainConfig(**TINY, epochs=3, out=str(tmp_path / "part"),
                      models_dir=str(tmp_path / "m"), resume=True, workers=workers))

    def losses(d):
        return [json.loads(x)["loss"] for x in (tmp_path / d / "metrics.jsonl").read_text()
                .splitlines()]

    assert losses("part") == pytest.approx(losses("full"), rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_bad_runs_are_refused_without_damage(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint"):
        train(TrainConfig(**TINY, out=str(tmp_path / "x"), resume=True))
    with pytest.raises(UsageError, match="t-d"):
        train(TrainConfig(**TINY, t_d=1.5, out=str(tmp_path / "y")))
    with pytest.raises(UsageError, match="unknown dataset"):
        train(TrainConfig(**{**TINY, "dataset": "mnist60k"}, out=str(tmp_path / "z")))
    cfg = TrainConfig(**TINY, epochs=1, out=str(tmp_path / "done"),
                      models_dir=str(tmp_path / "m"))
    train(cfg)
    before = (tmp_path / "done" / CHECKPOINT).read_bytes()
    with pytest.raises(UsageError, match="already holds a run"):
        train(cfg)
    assert (tmp_path / "done" / CHECKPOINT).read_bytes() == before
    assert not list((tmp_path / "done").glob(".*.tmp"))


@pytest.mark.slow
def test_energy_is_tracked_per_launch_and_a_resumed_run_adds_a_segment(tmp_path):
    from tests.measure.test_energy import _CC

    cfg = dict(TINY, energy=True, epochs=2, out=str(tmp_path / "run"),
               models_dir=str(tmp_path / "m"))
    seen = []

    def stop_after_first_epoch(state):
        seen.append(state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg), progress=stop_after_first_epoch, energy_factory=_CC)
    assert {"images_per_s", "eta_s", "steps", "epochs"} <= set(seen[0]) and seen[0]["eta_s"] > 0
    first = json.loads((tmp_path / "run" / "energy.json").read_text())
    assert len(first["segments"]) == 1 and first["total"]["label"] == "estimated"
    summary = train(TrainConfig(**{**cfg, "resume": True}), energy_factory=_CC)
    energy = json.loads((tmp_path / "run" / "energy.json").read_text())
    assert len(energy["segments"]) == 2
    assert summary["energy"]["energy_kwh"] == pytest.approx(0.006)


def test_amp_resolution(monkeypatch):
    from hwbench.train import precision as tr  # where amp_dtype reads cpu_bf16_native

    cpu = torch.device("cpu")
    assert tr.amp_dtype("off", cpu) is None and tr.amp_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(UsageError, match="fp16 needs a CUDA"):
        tr.amp_dtype("fp16", cpu)
    monkeypatch.setattr(tr, "cpu_bf16_native", lambda cpuinfo=None: (False, "emulated"))
    assert tr.amp_dtype("auto", cpu) is None
    monkeypatch.setattr(tr, "cpu_bf16_native", lambda cpuinfo=None: (True, "native"))
    assert tr.amp_dtype("auto", cpu) == torch.bfloat16
    assert tr.amp_dtype("off", cpu) is None  # an explicit mode wins over the CPU


def _cpuinfo(*flag_lines: str) -> str:
    """/proc/cpuinfo as Linux writes it on x86: one stanza per logical CPU, with the 'vmx flags'
    and 'bugs' lines that are not the 'flags' line."""
    return "".join(
        f"processor\t: {i}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\n"
        f"flags\t\t: {flags}\nvmx flags\t: vnmi preemption_timer invvpid ept_x_only\n"
        "bugs\t\t: spectre_v1 spectre_v2 spec_store_bypass\nbogomips\t: 4200.00\n\n"
        for i, flags in enumerate(flag_lines))


SKYLAKE = ("fpu vme de pse tsc msr sse sse2 ht syscall nx lm avx avx2 fma bmi1 bmi2 avx512f "
           "avx512dq avx512cd avx512bw avx512vl avx512_vnni xsaveopt")


@pytest.mark.parametrize("cpuinfo,native", [
    (_cpuinfo(SKYLAKE, SKYLAKE), False),  # AVX-512 alone: bf16 is emulated
    # AVX512-BF16 without AMX: measured slower than fp32, so fp32
    (_cpuinfo(SKYLAKE + " avx512_bf16", SKYLAKE + " avx512_bf16"), False),
    (_cpuinfo(SKYLAKE + " amx_bf16 amx_tile amx_int8", SKYLAKE + " amx_bf16 amx_tile amx_int8"),
     True),
    (_cpuinfo(SKYLAKE + " avx512_bf16 amx_bf16", SKYLAKE + " avx512_bf16"), False),  # not on all
    # aarch64: a 'Features' line (its bf16 is not the x86 flags this reads), no 'flags' line
    ("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 "
     "crc32 atomics fphp asimdhp cpuid asimdrdm bf16 i8mm\nCPU implementer\t: 0x41\n\n", False),
    ("", False),
])
def test_auto_takes_bf16_on_cpus_with_native_bf16_flags_only(cpuinfo, native):
    from hwbench.train.precision import amp_choice, cpu_bf16_native

    got, why = cpu_bf16_native(cpuinfo)
    assert got is native and why
    dtype, reason = amp_choice("auto", torch.device("cpu"), cpuinfo=cpuinfo)
    assert dtype == (torch.bfloat16 if native else None) and why in reason


def test_an_unreadable_cpuinfo_means_fp32(tmp_path):
    from hwbench.train.precision import cpu_bf16_native

    native, why = cpu_bf16_native(path=tmp_path / "cpuinfo")
    assert native is False and str(tmp_path / "cpuinfo") in why
    (tmp_path / "dir").mkdir()
    assert cpu_bf16_native(path=tmp_path / "dir")[0] is False
    (tmp_path / "x").write_text(_cpuinfo(SKYLAKE + " amx_bf16"))
    assert cpu_bf16_native(path=tmp_path / "x")[0] is True


def test_plan_epochs_fits_the_budget_at_the_boundary():
    from hwbench.train.schedule import plan_epochs

    kw = dict(step_s=1.0, eval_s=10.0, steps_per_epoch=10, eval_every=2, max_epochs=100,
              spent_s=5.0, save_s=0.5, final_s=3.0, margin=0.1)
    # 4 epochs: 4 x (10 x 1 + 0.5) + 2 evaluations x 10 + 3 = 65 s, 70 s with the 5 spent
    enough = plan_epochs(70 / 0.9 * (1 + 1e-9), **kw)
    assert (enough["epochs"], enough["steps_per_epoch"]) == (4, 10)
    assert enough["predicted_s"] == pytest.approx(70.0) and enough["evaluations"] == 2
    assert enough["predicted_s"] <= 0.9 * enough["budget_s"] and enough["limited_by"] == "budget"
    short = plan_epochs(70 / 0.9 * (1 - 1e-9), **kw)
    assert (short["epochs"], short["steps_per_epoch"]) == (3, 10)
    assert short["predicted_s"] == pytest.approx(5 + 3 * 10.5 + 2 * 10 + 3)
    # the cadence counts: evaluating every epoch, 3 epochs cost 69.5 s and 4 would cost 90
    assert plan_epochs(70 / 0.9 * (1 + 1e-9), **{**kw, "eval_every": 1})["epochs"] == 3
    capped = plan_epochs(1e6, **{**kw, "max_epochs": 7})
    assert capped["epochs"] == 7 and capped["limited_by"] == "--epochs"


def test_plan_epochs_shortens_the_one_epoch_that_does_not_fit():
    from hwbench.train.schedule import plan_epochs

    kw = dict(step_s=1.0, eval_s=10.0, steps_per_epoch=100, eval_every=5, max_epochs=10,
              spent_s=5.0, save_s=0.5, final_s=3.0, margin=0.1)
    # 90 usable - 5 spent - 0.5 - 10 - 3 = 71.5 s of steps
    plan = plan_epochs(100.0, **kw)
    assert (plan["epochs"], plan["steps_per_epoch"], plan["steps"]) == (1, 71, 71)
    assert plan["predicted_s"] <= 90.0 < plan["predicted_s"] + kw["step_s"]
    one = 5.0 + 0.5 + 10.0 + 3.0 + 1.0  # spent, checkpoint, evaluation, pattern, one step
    assert plan_epochs(one / 0.9 * (1 + 1e-9), **kw)["steps_per_epoch"] == 1
    with pytest.raises(UsageError, match="too short"):
        plan_epochs(one / 0.9 * (1 - 1e-9), **kw)


def test_short_budgeted_runs_default_to_a_lower_learning_rate():
    from hwbench.train.schedule import choose_lr

    assert choose_lr(None, 1999, True)[0] == 0.05 and "1999 steps" in choose_lr(None, 1999, True)[1]
    assert choose_lr(None, 2000, True)[0] == 0.3
    assert choose_lr(None, 400, False)[0] == 0.3  # no budget: the paper's
    assert choose_lr(0.2, 400, True) == (0.2, "given (--lr)")


@pytest.mark.slow
def test_a_time_budget_run_trains_as_its_chosen_epochs_would_and_resumes_them(tmp_path):
    full = TrainConfig(**TINY, epochs=2, lr=0.05, out=str(tmp_path / "full"),
                       models_dir=str(tmp_path / "m"))
    train(full)
    # a budget that fits many more: --epochs (2) is the maximum; 4 steps -> lr 0.05
    budget = dict(TINY, time_budget_s=3600.0, out=str(tmp_path / "b"),
                  models_dir=str(tmp_path / "m"))
    said = []

    def interrupt(state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**budget, epochs=2), progress=interrupt, say=said.append)
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())
    plan = cfg["time_budget"]
    assert (cfg["epochs"], plan["epochs"], plan["steps_per_epoch"]) == (2, 2, 2)
    assert plan["step_s"] > 0 and plan["eval_s"] > 0 and plan["save_s"] > 0
    assert plan["predicted_s"] <= 0.9 * 3600 and plan["limited_by"] == "--epochs"
    assert cfg["lr"] == 0.05 and "4 steps" in cfg["lr_reason"]
    assert cfg["amp_dtype"] in ("bfloat16", "fp32") and "--amp auto" in cfg["amp_reason"]
    assert any(line.startswith("time budget 3600 s") for line in said)
    with pytest.raises(UsageError, match="resume it with that --time-budget"):
        train(TrainConfig(**{**budget, "time_budget_s": 60.0}, resume=True))
    said.clear()
    # resumed without --epochs (the CLI's maximum) and without --lr: the chosen ones are kept
    summary = train(TrainConfig(**budget, epochs=1000, resume=True), say=said.append)
    assert not any(line.startswith("time budget") for line in said)  # not measured again
    assert any("resuming with 2 epochs" in line for line in said)
    assert summary["config"]["time_budget"] == plan and summary["time_budget"]["elapsed_s"] > 0

    def rows(d):
        return [json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]

    assert [r["loss"] for r in rows("b")] == [r["loss"] for r in rows("full")]
    a = torch.load(tmp_path / "full" / CHECKPOINT, weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_budget_too_short_for_one_epoch_trains_fewer_steps(tmp_path, monkeypatch):
    from hwbench.train import loop as tr  # where the loop reads what is patched

    real = tr.plan_epochs
    seen = {}

    def one_step(*args, **kwargs):  # the budget's arithmetic on this machine's real timings
        plan = real(*args, **kwargs)
        seen.update(plan)
        return {**plan, "epochs": 1, "steps_per_epoch": 1, "steps": 1}

    monkeypatch.setattr(tr, "plan_epochs", one_step)
    summary = train(TrainConfig(**TINY, epochs=3, time_budget_s=600.0, out=str(tmp_path / "r"),
                                models_dir=str(tmp_path / "m")))
    cfg = summary["config"]
    assert seen["steps_per_epoch"] == 2  # TINY's two steps per epoch fitted...
    assert (cfg["epochs"], cfg["max_steps_per_epoch"]) == (1, 1)  # ...the plan's one is run
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("final,warned", [
    ({"dense": 60.0, "gated": 39.9}, ["gated"]),
    ({"dense": 49.9, "gated": 40.1}, ["dense"]),
    ({"dense": 50.1, "gated": 40.0}, []),  # equal is not below
])
def test_features_worse_than_random_are_flagged(tmp_path, monkeypatch, final, warned):
    from hwbench.train import loop as tr  # where the loop reads what is patched

    calls = []

    def fake_evaluate(model, cfg, train_split, test_split, device):
        top1 = {"dense": 50.0, "gated": 40.0} if not calls else final
        calls.append(top1)
        return {"knn_top1_dense": top1["dense"], "knn_top1_gated": top1["gated"],
                "knn_test_n": len(test_split), "eval_macs_ratio": 0.52}

    monkeypatch.setattr(tr, "evaluate", fake_evaluate)
    said = []
    summary = train(TrainConfig(**TINY, epochs=1, out=str(tmp_path / "r"),
                                models_dir=str(tmp_path / "m")), say=said.append)
    assert len(calls) == 2  # initial and final
    on_disk = json.loads((tmp_path / "r" / "summary.json").read_text())["warnings"]
    assert on_disk == summary["warnings"]
    assert [w.split(" stream")[0].split()[-1] for w in on_disk] == warned
    for w in on_disk:
        assert w.startswith("WARNING:") and "randomly initialised" in w and w in said


@pytest.mark.slow
def test_resume_refuses_a_different_configuration(tmp_path):
    cfg = dict(TINY, epochs=1, out=str(tmp_path / "r"), models_dir=str(tmp_path / "m"))
    train(TrainConfig(**cfg))
    before = (tmp_path / "r" / CHECKPOINT).read_bytes()
    with pytest.raises(UsageError, match="t_d=0.5"):
        train(TrainConfig(**{**cfg, "t_d": 0.3, "resume": True}))
    assert (tmp_path / "r" / CHECKPOINT).read_bytes() == before


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(epochs=4, warmup_epochs=1, lr=0.3, batch_size=256)
    lrs = [lr_at(cfg, s, 10) for s in range(40)]
    assert lrs[0] == pytest.approx(0.03) and lrs[9] == pytest.approx(0.3)
    assert lrs[10] == pytest.approx(0.3) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert torch.tensor(lrs).max().item() == pytest.approx(0.3)






def test_train_cli_bad_input(tmp_path):
    assert "mutually exclusive" in _one_line(_cli("train", "--t-d", "0.3", "--target-latency",
                                                  "5ms", "--out", tmp_path / "a"))
    assert "unknown dataset" in _one_line(_cli("train", "--dataset", "imagenet1k",
                                               "--out", tmp_path / "b"))
    assert "--t-d" in _one_line(_cli("train", "--t-d", "0", "--out", tmp_path / "c"))
    assert "no checkpoint" in _one_line(_cli("train", "--resume", "--dataset", "synthetic",
                                             "--out", tmp_path / "d"))
    assert "cannot parse latency" in _one_line(_cli("train", "--target-latency", "soon",
                                                    "--target-device", "x.json",
                                                    "--out", tmp_path / "e"))
    assert "no such profile" in _one_line(_cli("train", "--target-latency", "5ms",
                                               "--target-device", tmp_path / "none.json",
                                               "--out", tmp_path / "f"))
    assert "--data-dir" in _one_line(_cli("train", "--dataset", "cifar10",
                                          "--out", tmp_path / "g"))
    assert "needs --target-latency" in _one_line(_cli("train", "--target-device", "cpu",
                                                      "--out", tmp_path / "h"))
    assert "fp16 needs a CUDA device" in _one_line(_cli("train", "--amp", "fp16", "--device",
                                                        "cpu", "--out", tmp_path / "h"))
    from hwbench.io import atomic_write_json
    from tests.profile.test_predictor import synthetic_profile

    prof = atomic_write_json(tmp_path / "prof.json", synthetic_profile())
    r = _cli("train", "--dataset", "synthetic", "--target-latency", "1us", "--target-device",
             prof, "--out", tmp_path / "i")
    assert "below the fastest" in _one_line(r, code=2)  # bad input: nothing trained
    assert not (tmp_path / "i").exists()
    other = synthetic_profile()
    other["fingerprint"] = {**other["fingerprint"], "stem": "imagenet", "input_size": 96}
    atomic_write_json(tmp_path / "stl.json", other)
    assert "this run trains resnet18/cifar/32px" in _one_line(_cli(
        "train", "--dataset", "synthetic", "--target-latency", "5ms", "--target-device",
        tmp_path / "stl.json", "--out", tmp_path / "j"))
    assert not any((tmp_path / d).exists() for d in "abcdefghij")


@pytest.mark.slow
def test_train_cli_picks_t_d_from_a_profile(tmp_path, monkeypatch):
    from hwbench.io import atomic_write_json
    from hwbench.pattern.gate_pattern import synthesise
    from hwbench.profile.predictor import Predictor
    from tests.profile.test_predictor import synthetic_profile

    monkeypatch.chdir(tmp_path)  # the learned pattern goes to ./models/<run>.json
    prof = synthetic_profile()
    path = atomic_write_json(tmp_path / "prof.json", prof)
    target_ms = Predictor(prof).predict(synthesise("resnet18", "cifar", 32, 0.35), "p90") * 1.001
    r = _cli("train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "32",
             "--n-synthetic", "64",
             "--target-latency", f"{target_ms:.4f}ms", "--target-device", path,
             "--out", tmp_path / "run", "--no-energy")
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["t_d"] == pytest.approx(0.35) and cfg["decision"]["profile"] == str(path)
    assert "t_d 0.35 picked" in r.output
    assert "kNN top-1 dense" in r.output and "standard error on 64 test images" in r.output
    assert (tmp_path / "models" / "run.json").exists()
    # the target device is not this machine: nothing measured, no verdict to give
    assert not (tmp_path / "run" / "final.json").exists()


@pytest.mark.parametrize("args, needle", [
    (("--gate", "bogus"), "--gate 'bogus'"),
    (("--gate", "width:0"), "--gate 'width:0'"),
    (("--gate", "width:48"), "multiple of 48"),
    (("--width-mult", "0"), "--width-mult 0"),
    (("--width-mult", "1.5"), "--width-mult 1.5"),
    (("--width-mult", "nan"), "--width-mult nan"),
])
def test_train_cli_bad_gate_or_width_mult_is_one_line(tmp_path, args, needle):
    r = _cli("train", "--dataset", "synthetic", *args, "--out", tmp_path / "r")
    assert needle in _one_line(r)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_width_gated_cli_run_writes_a_width_pattern(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the learned pattern also goes to ./models/<run>.json
    r = _cli("train", "--dataset", "synthetic", "--gate", "width:16", "--epochs", "1",
             "--n-synthetic", "32", "--batch-size", "16", "--max-steps-per-epoch", "1",
             "--amp", "off", "--no-energy", "--out", tmp_path / "run")  # fp32: no bf16 warm-up
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["gate"] == "width:16" and cfg["widths"] is None
    pattern = load_pattern(tmp_path / "run" / "pattern.json")
    assert pattern.gate.kind == "width" and pattern.gate.step == 16
    for lp in pattern.layers:
        assert len(lp.width_hist) == lp.channels // 16 + 1
        assert sum(lp.width_hist) == pytest.approx(1.0)
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=False)["config"]["gate"] \
        == "width:16"


@pytest.mark.slow
def test_a_thinner_dense_run_records_its_widths_and_reloads(tmp_path):
    from hwbench.nets import width_mult_widths
    from hwbench.train.evaluation import load_run

    cfg = dict(TINY, method="dense", width_mult=0.5, epochs=1, eval_initial=False,
               out=str(tmp_path / "r"), models_dir=str(tmp_path / "m"))
    train(TrainConfig(**cfg))
    want = width_mult_widths("resnet18", 0.5, 16)
    assert want == [32, 32, 64, 64, 128, 128, 256, 256]
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())
    assert recorded["widths"] == want and recorded["gate"] == "channel"
    net, ck_cfg, _ = load_run(tmp_path / "r" / CHECKPOINT)  # net_from_config: strict load
    assert ck_cfg["widths"] == want and net.widths == want
    assert [b.conv1.out_channels for _, b in net.blocks()] == want
    before = (tmp_path / "r" / CHECKPOINT).read_bytes()
    with pytest.raises(UsageError, match="gate="):  # a resume key
        train(TrainConfig(**{**cfg, "gate": "width:16", "resume": True}))
    with pytest.raises(UsageError, match="widths="):
        train(TrainConfig(**{**cfg, "width_mult": 0.25, "resume": True}))
    assert (tmp_path / "r" / CHECKPOINT).read_bytes() == before


def test_widths_that_are_not_multiples_of_the_width_gate_step_are_refused():
    from hwbench.train.config import validate

    with pytest.raises(UsageError, match="multiple of 16"):
        validate(TrainConfig(dataset="synthetic", gate="width:16", widths=[24] * 8))
    with pytest.raises(UsageError, match="needs 8"):
        validate(TrainConfig(dataset="synthetic", widths=[32] * 3))


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_terms_are_read_at_the_cadence_and_the_epoch_means_are_the_step_means(tmp_path,
                                                                               monkeypatch):
    cfg = {**TINY, "n_synthetic": 24, "batch_size": 4, "max_steps_per_epoch": 5, "epochs": 1,
           "eval_initial": False, "models_dir": str(tmp_path / "m")}
    every_step = []
    train(TrainConfig(**cfg, out=str(tmp_path / "a")), progress=every_step.append)
    assert [s["step"] for s in every_step] == list(range(1, 6))  # a CPU: every step
    row = _metrics(tmp_path / "a")[0]
    names = ("loss", "vicreg", "invariance", "variance", "covariance", "sparsity", "bound",
             "macs_ratio", "deployed_macs_ratio")
    for k in names:  # summed on the device in float64 as the host would: the same numbers
        assert row[k] == sum(s[k] for s in every_step) / 5
    # the end of the epoch (fidelity's training side): its last ceil(5 / 4) = 2 steps only
    assert sorted(k for k in row if k.startswith("end_")) == \
        ["end_deployed_macs_ratio", "end_macs_ratio"]
    assert row["end_macs_ratio"] == pytest.approx(sum(s["macs_ratio"] for s in every_step[3:]) / 2)
    monkeypatch.setattr("hwbench.train.loop.read_every", lambda device: 2)  # as on a GPU
    cadenced = []
    train(TrainConfig(**cfg, out=str(tmp_path / "b")), progress=cadenced.append)
    assert [s["step"] for s in cadenced] == [2, 4, 5]  # and the epoch's last
    assert [s["loss"] for s in cadenced] == [every_step[i]["loss"] for i in (1, 3, 4)]
    assert {k: _metrics(tmp_path / "b")[0][k] for k in names} == {k: row[k] for k in names}


@pytest.mark.slow
def test_the_training_loops_step_reads_nothing_from_the_device(tmp_path, monkeypatch):
    import hwbench.train.loop as trainmod
    from hwbench.io import atomic_write_json
    from tests.ssl.syncs import no_host_sync
    from tests.train.test_budget import curved_profile

    step, steps = trainmod._step, []

    def guarded(*args, **kwargs):
        with no_host_sync():
            steps.append(step(*args, **kwargs))
        return steps[-1]

    monkeypatch.setattr(trainmod, "_step", guarded)
    prof = atomic_write_json(tmp_path / "p.json", curved_profile(3))
    train(TrainConfig(**TINY, epochs=1, eval_initial=False, gate="width:16", amp="bf16",
                      budget="latency", latency_targets=({"device": "cpu", "profile": str(prof),
                                                          "target_ms": 2.0},),
                      out=str(tmp_path / "run"), models_dir=str(tmp_path / "m")))
    assert len(steps) == 2 and "latency_ms_0" in steps[0]


@pytest.mark.slow
def test_a_checkpoint_with_the_old_three_optimizer_groups_resumes(tmp_path):
    """Before issue 16 the gates' 1-D parameters sat in the plain group: such a checkpoint is
    regrouped on resume and continues as a run of this version would."""
    from hwbench.nets import net_from_config
    from hwbench.ssl.model import LARS, SSLModel, lars_param_groups
    from tests.ssl.test_lars import _old_groups

    cfg = {**TINY, "epochs": 2, "gate_lr_mult": 2.0, "eval_initial": False, "eval_every": 2,
           "models_dir": str(tmp_path / "m")}
    train(TrainConfig(**cfg, out=str(tmp_path / "full")))

    def interrupt(state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg, out=str(tmp_path / "part")), progress=interrupt)
    path = tmp_path / "part" / CHECKPOINT
    ck = torch.load(path, weights_only=False)
    model = SSLModel(net_from_config(ck["config"], "cifar"), tuple(ck["config"]["proj_dims"]))
    new = LARS(lars_param_groups(model, 2.0), lr=0.0)
    new.load_state_dict(ck["optimizer"])
    old = LARS(_old_groups(model, 2.0), lr=0.0)
    old.state.update({p: new.state[p] for p in model.parameters() if p in new.state})
    ck["optimizer"] = old.state_dict()  # as an older hwbench saved it
    assert len(ck["optimizer"]["param_groups"]) == 3
    torch.save(ck, path)
    train(TrainConfig(**cfg, out=str(tmp_path / "part"), resume=True))
    assert [r["loss"] for r in _metrics(tmp_path / "part")] == \
        pytest.approx([r["loss"] for r in _metrics(tmp_path / "full")], rel=1e-6, abs=1e-7)
    ck = torch.load(path, weights_only=False)
    assert [g["lr_mult"] for g in ck["optimizer"]["param_groups"]] == [1.0, 2.0, 1.0, 2.0]


@pytest.mark.slow
def test_a_compiled_run_trains_as_the_eager_one_and_records_it(tmp_path, monkeypatch):
    """The wiring of --compile (Dynamo's eager backend: the captured graph, run as is; the
    inductor step is checked in tests/ssl/test_compile.py)."""
    import torch._dynamo

    monkeypatch.setattr("hwbench.train.run.COMPILE_BACKEND", "eager")
    cfg = {**TINY, "epochs": 1, "eval_initial": False, "models_dir": str(tmp_path / "m")}
    train(TrainConfig(**cfg, out=str(tmp_path / "eager")))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(TrainConfig(**cfg, out=str(tmp_path / "compiled"), compile=True))
    assert not torch._dynamo.utils.counters["graph_break"]  # one graph: nothing synced
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"] is True
    assert _metrics(tmp_path / "compiled")[0]["loss"] == \
        pytest.approx(_metrics(tmp_path / "eager")[0]["loss"], rel=1e-5)


def test_compile_is_refused_in_one_line_where_it_cannot_run(tmp_path, monkeypatch):
    from hwbench.train.precision import check_compile

    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(UsageError, match="C\\+\\+ compiler"):
        check_compile(torch.device("cpu"))
    with pytest.raises(UsageError, match="cpu or cuda"):
        check_compile(torch.device("meta"))
    monkeypatch.setattr("torch.utils._triton.has_triton", lambda: False)
    with pytest.raises(UsageError, match="Triton"):
        check_compile(torch.device("cuda"))
    assert "C++ compiler" in _one_line(_cli("train", "--dataset", "synthetic", "--compile",
                                            "--out", tmp_path / "x", "--no-energy"))


def test_gate_noise_anneals_to_zero_over_the_last_share_of_the_steps():
    from hwbench.train.schedule import noise_at

    total = 100
    assert [noise_at(0.0, s, total) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]  # the paper's
    curve = [noise_at(0.4, s, total) for s in range(total)]
    assert curve[59] == 1.0 and curve[60] == 1.0  # full noise until 60 % of the steps
    assert 0.45 < curve[70] < 0.55  # halfway down the ramp (60 % -> 80 %)
    assert curve[79] > 0.0 and curve[80] == 0.0 and curve[99] == 0.0  # noise-free at the end
    assert all(a >= b for a, b in zip(curve, curve[1:]))


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_a_bad_gate_noise_anneal_is_a_usage_error(value):
    from hwbench.errors import UsageError
    from hwbench.train.config import TrainConfig, validate

    with pytest.raises(UsageError, match="--gate-noise-anneal"):
        validate(TrainConfig(dataset="synthetic", gate_noise_anneal=value), files=False)


@pytest.mark.parametrize("args,word", [
    (["--finetune-steps", "-1", "--target-latency", "0.67x"], "--finetune-steps"),
    (["--finetune-steps", "many"], "--finetune-steps"),
    (["--gate-noise-anneal", "2"], "--gate-noise-anneal"),
])
def test_bad_fine_tuning_and_noise_options_are_one_line_before_any_work(tmp_path, args, word):
    out = tmp_path / "run"
    err = _one_line(_cli("train", "--dataset", "synthetic", "--out", str(out), *args))
    assert word in err and not out.exists()


@pytest.mark.slow
def test_the_gate_warmup_and_a_frozen_gate_bias_reach_the_training_loop(tmp_path):
    cfg = TrainConfig(**{**TINY, "eval_every": 5}, epochs=2, warmup_epochs=1, gate_warmup=True,
                      gate_bias="none", t_d=0.3, out=str(tmp_path / "run"),
                      models_dir=str(tmp_path / "models"))
    seen = []
    train(cfg, progress=seen.append)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    assert rows[0]["macs_ratio"] >= 1.0 and rows[0]["loss"] == pytest.approx(rows[0]["vicreg"])
    assert rows[1]["macs_ratio"] < 0.95 and rows[1]["loss"] > rows[1]["vicreg"]
    assert [s["macs_ratio"] >= 1.0 for s in seen] == [True, True, False, False]
    ck = torch.load(tmp_path / "run" / CHECKPOINT, map_location="cpu", weights_only=False)
    biases = [v for k, v in ck["model"].items() if k.endswith("gate.fc2.bias")]
    assert biases and all(float(b.abs().max()) == 0.0 for b in biases)
    assert ck["config"]["gate_bias"] == "none" and ck["config"]["gate_warmup"] is True


@pytest.mark.parametrize("args,word", [
    (["--gate-bias", "none", "--gate", "width:16"], "--gate-bias learned"),
    (["--gate-bias", "zero"], "--gate-bias"),
])
def test_bad_gate_knobs_are_one_line_before_any_work(tmp_path, args, word):
    out = tmp_path / "run"
    err = _one_line(_cli("train", "--dataset", "synthetic", "--out", str(out), *args))
    assert word in err and not out.exists()
