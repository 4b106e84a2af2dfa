"""hwbench export: the exported file computes the compact engine's function (fp32, 1e-4)."""

import json
import sys
from pathlib import Path

import pytest
import torch

from hwbench.deploy.export import (
    TOLERANCE,
    EqualityError,
    deployable,
    export,
    exported_pattern,
    load_metadata,
)
from hwbench.engine import build_engine, pattern_inputs, realise
from hwbench.errors import UsageError
from hwbench.pattern.gate_pattern import mixed_pattern
from hwbench.pattern.macs import pattern_report
from tests.conftest import one_line_error, run_cli

onnxruntime = pytest.importorskip("onnxruntime")

KINDS = ("dense", "channel", "width:16")


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Per image max|got - ref| / max|ref|, the worst image (written here, not imported)."""
    return max(float((g - r).abs().max() / r.abs().max()) for g, r in zip(got, ref))


def engine_features(net, pattern, x: torch.Tensor) -> torch.Tensor:
    engine = build_engine(net, "dense" if pattern is None else "static", pattern)
    return torch.cat([engine(xi[None]) for xi in x])


def _pattern(kind: str, arch: str = "resnet18"):
    if kind == "dense":
        return None
    return mixed_pattern(arch, "cifar", 32, 0.5, seed=3, gate=kind)


@pytest.fixture(scope="module")
def nets():
    """kind -> (network, pattern): realised mixed patterns (dynamic channels whose decisions
    vary from input to input), and an untrained dense network."""
    out = {kind: (realise(_pattern(kind), calibration=16), _pattern(kind))
           for kind in ("channel", "width:16")}
    out["dense"] = (out["channel"][0], None)  # its dense stream
    return out


def _save_run(folder: Path, net, pattern, kind: str) -> Path:
    """A training run folder as ``hwbench train`` leaves it (checkpoint.pt, pattern.json) on
    the digits data set (real test images, no download)."""
    folder.mkdir(parents=True)
    cfg = {"arch": "resnet18", "dataset": "digits", "method": "dense" if kind == "dense" else "co",
           "t_d": 0.5, "gate": "channel" if kind == "dense" else kind, "widths": None,
           "shared_downsample_bn": True, "seed": 0}
    torch.save({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()},
                "config": cfg, "epoch": 0}, folder / "checkpoint.pt")
    if pattern is not None:
        pattern.save(folder / "pattern.json")
    return folder


@pytest.fixture(scope="module")
def runs(nets, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {kind: _save_run(root / kind.replace(":", "-"), *nets[kind], kind) for kind in KINDS}


@pytest.mark.slow
@pytest.mark.parametrize("arch,kind", [("resnet18", k) for k in KINDS] +
                         [pytest.param("resnet50", "channel", marks=pytest.mark.slow)])
def test_the_deployable_module_is_the_static_engine_traced_and_scripted(nets, arch, kind):
    if arch == "resnet18":
        net, p = nets[kind]
    else:
        p = _pattern(kind, arch)
        net = realise(p, calibration=16)
    x = pattern_inputs(4, 32, seed=5)
    ref = engine_features(net, p, x)
    mod = deployable(net, p)
    with torch.no_grad():
        assert rel_err(mod(x), ref) <= TOLERANCE
        if arch == "resnet18":  # the Bottleneck's code paths are the BasicBlock's
            assert rel_err(torch.jit.trace(mod, x[:1])(x), ref) <= TOLERANCE
            assert rel_err(torch.jit.script(mod)(x), ref) <= TOLERANCE
    if p is not None:  # the gates matter here: all dynamic channels on is another function
        for blk in mod.blocks:
            blk.gate = None
        with torch.no_grad():
            assert rel_err(mod(x), ref) > 100 * TOLERANCE
    else:
        assert all(blk.gate is None for blk in mod.blocks)


def test_the_static_module_drops_always_off_channels(nets):
    net, p = nets["channel"]
    mod = deployable(net, p)
    kept = [blk.inner[0].out_channels if len(blk.inner) else 0 for blk in mod.blocks]
    assert kept == p.kept_channels()
    assert sum(kept) < sum(lp.channels for lp in p.layers)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_export_loaded_back_equals_the_engine_on_real_images(runs, nets, tmp_path, fmt, kind):
    out = tmp_path / "exp"
    res = export(runs[kind], out, fmt, images=4)
    net, p = nets[kind]
    path = out / ("model.onnx" if fmt == "onnx" else "model.pt")
    assert res["written"]["model"] == str(path) and path.is_file()
    assert res["mode"] == ("dense" if kind == "dense" else "static")
    assert res["check"]["passed"] and res["check"]["max_rel_err"] <= TOLERANCE
    assert res["check"]["images"]["source"] == "digits:test"
    # independently of the export's own check: other images, the runtime called here
    x = pattern_inputs(3, 32, seed=9)
    if fmt == "onnx":
        sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])  # a batch of 3
    else:
        got = torch.jit.load(str(path))(x)
    assert rel_err(got, engine_features(net, p, x)) <= TOLERANCE


def test_model_json_round_trips(runs, nets, tmp_path):
    res = export(runs["width:16"], tmp_path / "exp", "onnx", images=2)
    meta = load_metadata(tmp_path / "exp")
    assert meta == json.loads(json.dumps({k: v for k, v in res.items() if k != "written"}))
    net, p = nets["width:16"]
    assert exported_pattern(meta).to_dict() == p.to_dict()
    assert (meta["arch"], meta["stem"], meta["input_size"]) == ("resnet18", "cifar", 32)
    assert meta["gate"] == {"kind": "width", "step": 16} and meta["opset"] == 17
    assert meta["format"] == "onnx" and meta["file"] == "model.onnx"
    from hwbench import __version__

    assert meta["hwbench_version"] == __version__
    assert meta["macs"]["unit"] == "MACs per image"
    assert meta["macs"]["pattern"] == pytest.approx(pattern_report(p).gated_macs)
    assert meta["macs"]["dense"] == pattern_report(p).dense_macs
    assert meta["input"]["normalisation"]["dataset"] == "digits"
    assert meta["check"]["runtime"]["name"] == "onnxruntime"
    with pytest.raises(UsageError, match="not an hwbench export"):
        (tmp_path / "bad.json").write_text("{}")
        load_metadata(tmp_path / "bad.json")


@pytest.mark.slow
def test_a_pattern_file_exports_on_synthetic_images_labelled_so(tmp_path):
    p = mixed_pattern("resnet18", "cifar", 32, 0.5, seed=1)
    p.save(tmp_path / "p.json")
    res = export(tmp_path / "p.json", tmp_path / "exp", "torchscript", images=2)
    assert res["check"]["images"]["source"] == "synthetic" and res["check"]["passed"]
    assert res["source"]["trained"] is False and res["input"]["normalisation"] is None


def test_the_cli_exports_and_says_what_it_checked(runs, tmp_path):
    r = run_cli("export", runs["channel"], "--out", tmp_path / "exp", "--format", "torchscript",
                "--images", 2)
    assert r.exit_code == 0, r.output
    assert "max relative error" in r.output and "digits:test" in r.output
    assert (tmp_path / "exp" / "model.pt").is_file() and (tmp_path / "exp" / "model.json").is_file()


def test_the_onnx_file_is_checked_on_every_runtime_named(runs, tmp_path):
    pytest.importorskip("openvino")
    r = run_cli("export", runs["width:16"], "--out", tmp_path / "exp", "--images", 4,
                "--check-on", "onnxruntime,openvino")
    assert r.exit_code == 0, r.output
    assert "and on openvino" in r.output
    meta = load_metadata(tmp_path / "exp")
    on = meta["check"]["on_runtimes"]
    assert [c["runtime"]["name"] for c in on] == ["onnxruntime", "openvino"]
    assert all(c["passed"] and c["max_rel_err"] <= TOLERANCE for c in on)


def test_an_openvino_check_needs_no_onnxruntime(runs, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # only hwbench[openvino] installed
    r = run_cli("export", runs["channel"], "--out", tmp_path / "exp", "--images", 2,
                "--check-on", "openvino")
    assert r.exit_code == 0, r.output
    assert load_metadata(tmp_path / "exp")["check"]["runtime"]["name"] == "openvino"


def test_check_on_is_refused_where_it_has_no_meaning(runs, tmp_path, monkeypatch):
    out = tmp_path / "exp"
    assert "torch.jit.load" in one_line_error(run_cli(
        "export", runs["channel"], "--out", out, "--format", "torchscript", "--check-on",
        "openvino"))
    assert "unknown runtime" in one_line_error(run_cli(
        "export", runs["channel"], "--out", out, "--check-on", "tensorrt"))
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert "pip install 'hwbench[openvino]'" in one_line_error(run_cli(
        "export", runs["channel"], "--out", out, "--check-on", "onnxruntime,openvino"))
    assert not out.exists()


def test_a_missing_runtime_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    line = one_line_error(run_cli("export", runs["channel"], "--out", tmp_path / "exp"))
    assert "onnxruntime" in line and "pip install 'hwbench[onnx]'" in line
    assert not (tmp_path / "exp").exists()


def test_bad_inputs_are_refused_in_one_line(runs, tmp_path):
    other = mixed_pattern("resnet34", "cifar", 32, 0.5)
    other.save(tmp_path / "r34.json")
    width = mixed_pattern("resnet18", "cifar", 32, 0.5, gate="width:16")
    width.save(tmp_path / "w.json")
    out = tmp_path / "exp"
    cases = [
        ((tmp_path / "nope", "--out", out), "no such run folder"),
        ((runs["channel"], "--out", out, "--format", "tflite"), "tflite"),
        ((runs["channel"], "--out", out, "--pattern", tmp_path / "r34.json"), "resnet34"),
        ((runs["channel"], "--out", out, "--pattern", tmp_path / "w.json"), "width:16"),
        ((runs["dense"], "--out", out, "--pattern", tmp_path / "w.json"), "dense run"),
        ((tmp_path / "w.json", "--out", out, "--pattern", tmp_path / "w.json"), "no --pattern"),
        ((runs["channel"], "--out", runs["channel"] / "checkpoint.pt"), "is a file"),
    ]
    for args, says in cases:
        assert says in one_line_error(run_cli("export", *args)), args
    assert not out.exists()
    with pytest.raises(UsageError, match="unknown format"):
        export(runs["channel"], out, "tflite")


def test_a_broken_export_fails_the_check_and_writes_nothing(runs, tmp_path, monkeypatch):
    import hwbench.deploy.export as ex

    good = ex.deployable

    def without_gates(net, pattern=None):  # every dynamic channel always on: not the engine
        mod = good(net, pattern)
        for blk in mod.blocks:
            blk.gate = None
        return mod

    monkeypatch.setattr(ex, "deployable", without_gates)
    out = tmp_path / "new" / "exp"
    line = one_line_error(run_cli("export", runs["channel"], "--out", out, "--format",
                                  "torchscript", "--images", 4), code=1)
    assert "nothing written" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no staging folder left
    # an export already there stays as it was
    monkeypatch.setattr(ex, "deployable", good)
    export(runs["channel"], out, "onnx", images=2)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    monkeypatch.setattr(ex, "deployable", without_gates)
    with pytest.raises(EqualityError, match="max relative error"):
        export(runs["channel"], out, "onnx", images=4)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
