import json

import pytest
import torch

from hwbench.errors import PatternError, UsageError
from hwbench.nets import create_net
from hwbench.pattern.gate_pattern import (
    SCHEMA,
    GatePattern,
    load_pattern,
    mixed_pattern,
    round_to_tile,
    summarise,
    synthesise,
)
from hwbench.pattern.macs import pattern_report


def _valid_dict():
    return synthesise("resnet18", "cifar", 32, 0.3).to_dict()


def test_round_trip_through_a_file(tmp_path):
    pattern = synthesise("resnet18", "cifar", 32, 0.3)
    pattern.extra["dataset"] = "mnist5k"
    pattern.layers[0].always_on, pattern.layers[0].dynamic = 10, 16
    pattern.layers[0].always_off = 38
    pattern.layers[0].dynamic_on_rate = 0.5
    pattern.layers[0].on_idx = list(range(10))
    pattern.layers[0].dynamic_idx = list(range(10, 26))
    pattern.layers[0].dynamic_rates = [0.5] * 16
    path = pattern.save(tmp_path / "p.json")
    loaded = load_pattern(path)
    assert loaded == pattern
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write leaves no temporary file


def test_the_issue_example_layer_is_valid():
    d = _valid_dict()
    d["layers"][0] = {"name": "layer1.0", "channels": 64, "always_on": 10, "always_off": 38,
                      "dynamic": 16, "dynamic_on_rate": 0.5}
    assert GatePattern.from_dict(d).layers[0].expected_on() == 18


def _mutate(fn):
    d = _valid_dict()
    fn(d)
    return d


BAD = [
    ("schema", lambda d: d.update(schema="hwbench/gate-pattern@0")),
    ("arch", lambda d: d.update(arch="vgg16")),
    ("stem", lambda d: d.update(stem="tiny")),
    ("input_size", lambda d: d.update(input_size=0)),
    ("input_size", lambda d: d.update(input_size="32")),
    ("t_d", lambda d: d.update(t_d=1.5)),
    ("layers", lambda d: d["layers"].pop()),
    ("layers", lambda d: d.update(layers={})),
    ("layers[0].name", lambda d: d["layers"][0].update(name="layer9.0")),
    ("layers[1].channels", lambda d: d["layers"][1].update(channels=65)),
    ("layers[2].always_on", lambda d: d["layers"][2].update(always_on=1000)),
    ("layers[2].dynamic", lambda d: d["layers"][2].update(dynamic=-1)),
    ("layers[3].dynamic_on_rate", lambda d: d["layers"][3].update(dynamic_on_rate=1.2)),
    ("layers[0].on_idx", lambda d: d["layers"][0].update(on_idx=[0, 1])),
    ("layers[0].dynamic_rates", lambda d: d["layers"][0].update(dynamic_rates=[0.5])),
    ("layers[0]", lambda d: d["layers"].__setitem__(0, 3)),
    ("tile", lambda d: d.update(tile=0)),
    ("tile", lambda d: d.update(tile=8.0)),
    ("tile", lambda d: d.update(tile=True)),
]


@pytest.mark.parametrize("field,mutate", BAD)
def test_bad_pattern_files_name_the_file_and_the_field(tmp_path, field, mutate):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_mutate(mutate)))
    with pytest.raises(PatternError) as err:
        load_pattern(path)
    assert err.value.field == field
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value)
    assert "\n" not in str(err.value)


def test_invalid_json_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(PatternError, match="not valid JSON"):
        load_pattern(tmp_path / "x.json")
    with pytest.raises(PatternError, match="no such file"):
        load_pattern(tmp_path / "missing.json")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 224)])
def test_synthesise_hits_t_d_with_one_fraction_and_no_dynamic_channels(arch, stem, size):
    prev = 0.0
    # ResNet-50's fixed MACs (downsample, gates) put its floor near 0.12 at 224 px.
    for t_d in (0.15 if arch == "resnet50" else 0.1, 0.2, 0.3, 0.5, 0.7, 1.0):
        pattern = synthesise(arch, stem, size, t_d)
        ratio = pattern_report(pattern).ratio
        assert abs(ratio - t_d) < 0.01
        assert ratio > prev
        prev = ratio
        f = pattern.extra["always_on_fraction"]
        for lp in pattern.layers:
            assert lp.dynamic == 0
            assert lp.always_on == min(lp.channels, int(f * lp.channels + 0.5))


def test_synthesise_rejects_unreachable_budgets():
    with pytest.raises(PatternError, match="smallest gated MACs ratio"):
        synthesise("resnet18", "cifar", 32, 0.001)
    with pytest.raises(PatternError, match=r"\(0, 1\]"):
        synthesise("resnet18", "cifar", 32, 0.0)


def test_summarise_groups_channels_by_what_the_gates_did():
    net = create_net("resnet18", stem="cifar")
    with torch.no_grad():
        for _, block in net.blocks():
            w = block.gate.fc2.weight
            w[:8].zero_()
            block.gate.fc2.bias[:4] = 5.0   # channels 0-3: always on
            block.gate.fc2.bias[4:8] = -5.0  # channels 4-7: always off
    data = [torch.randn(16, 3, 32, 32) for _ in range(3)]
    pattern = summarise(net, data, dataset="synthetic")
    assert pattern.arch == "resnet18" and pattern.input_size == 32
    assert pattern.extra["samples"] == 48 and pattern.extra["dataset"] == "synthetic"
    assert net.training  # the caller's mode is restored
    net.eval()
    masks = [torch.cat(ms) for ms in zip(*[net.forward_gated(x).masks for x in data])]
    for lp, m in zip(pattern.layers, masks):
        assert lp.always_on + lp.always_off + lp.dynamic == lp.channels
        assert {0, 1, 2, 3} <= set(lp.on_idx)
        assert not {4, 5, 6, 7} & (set(lp.on_idx) | set(lp.dynamic_idx))
        assert m[:, lp.on_idx].all()
        if lp.dynamic:
            rates = m[:, lp.dynamic_idx].mean(0)
            assert rates.tolist() == pytest.approx(lp.dynamic_rates)
            assert lp.dynamic_on_rate == pytest.approx(rates.mean().item())
    # The summarised pattern is a valid file.
    assert GatePattern.from_dict(pattern.to_dict()) == pattern


def test_summarise_accepts_labelled_batches_and_rejects_empty_loaders():
    net = create_net("resnet18", stem="cifar")
    p = summarise(net, [(torch.randn(4, 3, 32, 32), torch.zeros(4))])
    assert p.extra["samples"] == 4
    with pytest.raises(PatternError, match="no samples"):
        summarise(net, [])


# ---- width patterns ----

from tests.conftest import random_gate_heads  # noqa: E402


def _width_dict():
    return mixed_pattern("resnet18", "cifar", 32, 0.5, seed=2, gate="width:16").to_dict()


def test_width_patterns_round_trip_and_derive_their_counts_from_the_histogram(tmp_path):
    p = mixed_pattern("resnet18", "cifar", 32, 0.5, seed=2, gate="width:16")
    assert p.to_dict()["gate"] == {"kind": "width", "step": 16}
    assert load_pattern(p.save(tmp_path / "w.json")) == p
    for lp in p.layers:
        ws = [w for w, _ in lp.widths()]
        assert lp.always_on == min(ws) and lp.channels - lp.always_off == max(ws)
        assert len(ws) > 1 and all(w % 16 == 0 for w in ws)
    assert p.macs_ratio() == pytest.approx(0.5, abs=0.01)
    # a channel pattern is written exactly as before: no gate key
    assert "gate" not in synthesise("resnet18", "cifar", 32, 0.5).to_dict()


WIDTH_BAD = [
    ("layers[0].width_hist", lambda d: d["layers"][0]["width_hist"].pop()),
    ("layers[0].width_hist", lambda d: d["layers"][0].update(
        width_hist=[0.5] + d["layers"][0]["width_hist"][1:])),  # no longer sums to 1
    ("layers[1].always_on", lambda d: d["layers"][1].update(
        always_on=d["layers"][1]["always_on"] + 16,
        always_off=d["layers"][1]["always_off"] - 16)),
    ("gate", lambda d: d.update(gate={"kind": "width"})),
    ("gate.step", lambda d: d.update(gate={"kind": "width", "step": 48})),
    ("gate", lambda d: d.pop("gate")),  # width_hist without a width gate
]


@pytest.mark.parametrize("field,mutate", WIDTH_BAD)
def test_bad_width_patterns_name_the_field(tmp_path, field, mutate):
    d = _width_dict()
    mutate(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PatternError) as err:
        load_pattern(path)
    assert err.value.field == field and "\n" not in str(err.value)


def test_summarise_a_width_gated_network_gives_the_histogram_of_its_decisions():
    torch.manual_seed(6)
    net = create_net("resnet18", stem="cifar", gate="width:16").eval()
    random_gate_heads(net, spread=2.0)
    x = torch.randn(24, 3, 16, 16) * torch.rand(24, 1, 1, 1) * 4
    p = summarise(net, [x[:10], x[10:]])
    masks = net.forward_gated(x).masks
    assert p.gate.kind == "width" and p.extra["samples"] == 24
    assert any(lp.dynamic for lp in p.layers)
    for lp, m in zip(p.layers, masks):
        kept = (m.sum(dim=1) / 16).long()
        want = torch.bincount(kept, minlength=lp.channels // 16 + 1).double() / 24
        assert lp.width_hist == pytest.approx(want.tolist())
        assert lp.expected_on() == pytest.approx(float(m.sum(dim=1).mean().detach()))
    assert p.macs_ratio() == pytest.approx(float(net.forward_gated(x).macs_ratio.mean().detach()))


def test_synthesised_width_priors_keep_whole_groups():
    p = synthesise("resnet18", "cifar", 32, 0.45, gate="width:16")
    assert all(k % 16 == 0 for k in p.kept_channels())
    assert all(len(lp.widths()) == 1 and lp.dynamic == 0 for lp in p.layers)
    assert p.macs_ratio() == pytest.approx(0.45, abs=0.03)


@pytest.mark.parametrize("gate", ["channel", "width:16"])
def test_a_thinner_network_summarises_as_the_full_arch_with_its_missing_suffix_off(tmp_path,
                                                                                   gate):
    from hwbench.nets import width_mult_widths
    from hwbench.pattern.gate_pattern import load_pattern

    widths = width_mult_widths("resnet18", 0.5, 16)
    net = create_net("resnet18", stem="cifar", widths=widths, gate=gate)
    pattern = summarise(net, [torch.randn(8, 3, 32, 32)])
    full = [b.width for b in pattern.geometry().blocks]
    for lp, w, c in zip(pattern.layers, widths, full):
        assert lp.channels == c and lp.always_off >= c - w
        assert lp.always_on + lp.dynamic <= w
        if gate != "channel":
            assert len(lp.width_hist) == c // 16 + 1 and sum(lp.width_hist[w // 16 + 1:]) == 0
    assert pattern.extra["widths"] == widths
    pattern.save(tmp_path / "p.json")
    again = load_pattern(tmp_path / "p.json")  # a valid pattern of the full arch
    assert [lp.to_dict() for lp in again.layers] == [lp.to_dict() for lp in pattern.layers]


def test_tile_round_trips_and_old_files_load_as_one(tmp_path):
    old = synthesise("resnet18", "cifar", 32, 0.3)
    assert old.tile == 1 and "tile" not in old.to_dict()  # files of before issue 16 unchanged
    assert load_pattern(old.save(tmp_path / "old.json")).tile == 1
    p = synthesise("resnet18", "cifar", 32, 0.3, tile=8)
    assert p.to_dict()["tile"] == 8
    assert load_pattern(p.save(tmp_path / "p.json")) == p
    with pytest.raises(UsageError, match="tile must be a positive integer"):
        synthesise("resnet18", "cifar", 32, 0.3, tile=0)


def test_round_to_tile():
    assert [round_to_tile(k, 8) for k in (0, 1, 8, 9, 16)] == [0, 8, 8, 16, 16]
    assert round_to_tile(60, 16, channels=64) == 64 and round_to_tile(63, 16, channels=60) == 60


@pytest.mark.parametrize("tile", [8, 16])
def test_generated_patterns_keep_multiples_of_the_tile(tile):
    for gate in ("channel", "width:16"):
        syn = synthesise("resnet18", "imagenet", 64, 0.5, gate=gate, tile=tile)
        mix = mixed_pattern("resnet18", "imagenet", 64, 0.5, seed=3, gate=gate, tile=tile)
        for p in (syn, mix):
            assert p.tile == tile
            assert all(k % tile == 0 for k in p.kept_channels()), (gate, p.kept_channels())
            assert p.macs_ratio() == pytest.approx(0.5, abs=0.03)
    # without the tile, the same generator keeps counts that are not multiples of it
    assert any(k % tile for k in mixed_pattern("resnet18", "imagenet", 64, 0.5,
                                               seed=3).kept_channels())
    assert synthesise("resnet18", "cifar", 32, 0.5).kept_channels(tile=tile) == [
        round_to_tile(k, tile) for k in synthesise("resnet18", "cifar", 32, 0.5).kept_channels()]


def test_a_pattern_whose_layers_disagree_with_its_gate_kind_is_refused():
    """Every stage reads a pattern by its gate kind: a width pattern's layers all hold their
    histogram, a channel pattern's none (a layer built the other way would be priced wrong)."""
    from hwbench.nets.gate import GateSpec
    from hwbench.pattern.gate_pattern import LayerPattern

    width = GateSpec.of("width", 16)
    hist = LayerPattern.from_width_hist("layer1.0", 64, 16, [0.0, 0.5, 0.0, 0.0, 0.5])
    plain = LayerPattern("layer1.0", 64, 16, 0, 48, 0.5)
    assert GatePattern("resnet18", "cifar", 32, [hist] * 8, gate=width).layers[0].step == 16
    with pytest.raises(ValueError, match="without width_hist"):
        GatePattern("resnet18", "cifar", 32, [hist] * 7 + [plain], gate=width)
    with pytest.raises(ValueError, match="with width_hist"):
        GatePattern("resnet18", "cifar", 32, [plain] * 7 + [hist])
