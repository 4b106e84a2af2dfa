"""``hwbench export``: the deployable network, in a file a runtime loads (ONNX, TorchScript).

``deployable(net, pattern)`` is a plain-torch module computing what the compact engine's
``static`` mode computes (fp32): BatchNorm folded into the convs, a pattern's always-off channels
removed, its always-on channels run without a gate, its dynamic channels computed and multiplied
by their gate's decision 1[logit >= 0] (the gate's BN folded too: two small matmuls). Without a
pattern it is the dense stream. Width-gated networks (``--gate width:G``) are one graph with the
nested mask (a channel is on when its group and every group before it are:
1[sum of the earlier groups' "off" decisions == 0], one matmul with a triangular 0/1 matrix).
The alternative, one graph per width bucket with the input dispatched by its width, is left for
measurement on each runtime (it skips the off channels' compute; the single graph computes every
kept channel and masks them, as the static engine does).

``export`` writes the module as ``model.onnx`` (``torch.onnx.export``, the TorchScript-based
exporter: ``dynamo=False``; opset 17) or ``model.pt`` (``torch.jit.script``), with ``model.json``
beside it, after an equality check: the written file is loaded back (ONNX Runtime, or
``torch.jit.load``) and compared with the ``CompactEngine`` in ``static`` mode (``dense`` without a
pattern) on real test images of the run's data set, one image per call. Only a file that passes
is written; the folder is filled through a temporary one and a rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hwbench import __version__
from hwbench.engine.fold import fold_bn
from hwbench.errors import HwbenchError, UsageError
from hwbench.nets.resnet import GatedBasicBlock, GatedResNet
from hwbench.patterns import GatePattern

SCHEMA = "hwbench/export@1"
FORMATS = ("onnx", "torchscript")
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
METADATA = "model.json"
OPSET = 17
TOLERANCE = 1e-4  # max relative error of the exported model vs the engine (fp32)
CHECK_IMAGES = 16  # test images the equality check runs, one per call
INPUT_NAME, OUTPUT_NAME = "images", "features"
ERROR_METRIC = ("max over images of max|exported - engine| / max|engine| (the image's feature "
                "vector; features are post-ReLU means, so their largest entry sets the scale)")


class EqualityError(HwbenchError):
    """The exported file does not compute what the engine computes: nothing was written."""

    exit_code = 1


# --------------------------------------------------------------------------- the module


def _frozen_conv(w: torch.Tensor, b: torch.Tensor, like: nn.Conv2d) -> nn.Conv2d:
    """A Conv2d with weight ``w`` and bias ``b``, ``like``'s stride and padding."""
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=like.stride,
                     padding=like.padding, bias=True)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    return conv


class DeployGate(nn.Module):
    """A block's gate, BN folded, for the channel ``rows`` it decides (the block's dynamic ones).

    Channel gates: (B, C_in, H, W) -> (B, len(rows)) 1[logit >= 0], only the rows' logits
    computed. Width gates (step G): all group logits; row i is on when no group up to
    rows[i] // G is off (``nest[j, i] = 1[j <= rows[i] // G]``): the engine's ``rows < k * G``.
    """

    def __init__(self, gate, rows: torch.Tensor):
        super().__init__()
        w1, b1 = fold_bn(gate.fc1.weight.flatten(1), gate.bn)
        w2, b2 = gate.fc2.weight.detach().flatten(1), gate.fc2.bias.detach()
        spec = gate.spec
        self.width = spec.kind == "width"
        if self.width:
            groups = torch.arange(w2.shape[0])[:, None]
            nest = (groups <= (rows // spec.step)[None, :]).float()
        else:
            w2, b2 = w2[rows], b2[rows]
            nest = torch.zeros(0, 0)
        self.fc1, self.fc2 = nn.Linear(w1.shape[1], w1.shape[0]), nn.Linear(w2.shape[1],
                                                                            w2.shape[0])
        with torch.no_grad():
            for fc, w, b in ((self.fc1, w1, b1), (self.fc2, w2, b2)):
                fc.weight.copy_(w)
                fc.bias.copy_(b)
        self.register_buffer("nest", nest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
        if self.width:
            off = (z < 0).to(x.dtype)
            return (torch.matmul(off, self.nest) < 0.5).to(x.dtype)
        return (z >= 0).to(x.dtype)


class DeployBlock(nn.Module):
    """One residual block (BasicBlock or Bottleneck), folded, over its ``kept`` inner channels
    (always-on first, ``n_on`` of them, then the dynamic ones): the inner convs keep those
    output channels, the following convs those input channels; the dynamic channels are
    multiplied by the gate's decision after each inner conv. No kept channel: shortcut + the
    last conv's bias + ReLU."""

    def __init__(self, block, kept: torch.Tensor, n_on: int, stream: str):
        super().__init__()
        basic = isinstance(block, GatedBasicBlock)
        convs = [block.conv1, block.conv2] if basic else [block.conv1, block.conv2, block.conv3]
        bns = [block.bn1, block.bn2] if basic else [block.bn1, block.bn2, block.bn3]
        folded = [fold_bn(c.weight, bn.dense if stream == "dense" else bn.gated)
                  for c, bn in zip(convs, bns)]
        self.n_on, self.empty = n_on, len(kept) == 0
        mods = []
        for i, (conv, (w, b)) in enumerate(zip(convs, folded)):
            if i > 0:
                w = w[:, kept]
            if i < len(convs) - 1:
                w, b = w[kept], b[kept]
            mods.append(None if self.empty else _frozen_conv(w, b, conv))
        self.inner = nn.ModuleList([] if self.empty else mods[:-1])
        self.last = mods[-1]
        self.register_buffer("bias_out", folded[-1][1].view(1, -1, 1, 1).clone())
        ds = block.downsample
        self.ds = None if ds is None else _frozen_conv(*fold_bn(ds.conv.weight, ds.bn_for(stream)),
                                                       ds.conv)
        dyn = kept[n_on:]
        self.gate = DeployGate(block.gate, dyn) if len(dyn) and stream == "gated" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sc = x if self.ds is None else self.ds(x)
        if self.last is None:
            return F.relu(sc + self.bias_out)
        mask: torch.Tensor | None = None
        if self.gate is not None:  # always-on channels: a decision of 1
            mask = F.pad(self.gate(x), (self.n_on, 0), value=1.0)[:, :, None, None]
        h = x
        for conv in self.inner:
            h = F.relu(conv(h))
            if mask is not None:
                h = h * mask
        return F.relu(self.last(h) + sc)


class Deployable(nn.Module):
    """(B, 3, S, S) normalised images -> (B, num_features) features, as the engine returns."""

    def __init__(self, net: GatedResNet, pattern: GatePattern | None):
        super().__init__()
        from hwbench.engine.compact import channel_groups

        self.stem = _frozen_conv(*fold_bn(net.conv1.weight, net.bn1), net.conv1)
        self.maxpool = net.stem == "imagenet"
        groups = channel_groups(pattern) if pattern is not None else None
        blocks = []
        for i, (_, block) in enumerate(net.blocks()):
            if groups is None:
                width = block.conv1.out_channels
                blocks.append(DeployBlock(block, torch.arange(width), width, "dense"))
            else:
                g = groups[i]
                blocks.append(DeployBlock(block, g.kept, len(g.on), "gated"))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        if self.maxpool:
            x = F.max_pool2d(x, 3, 2, 1)
        return self.blocks(x).mean(dim=(2, 3))


def check_pattern(net: GatedResNet, pattern: GatePattern | None, where: str = "pattern") -> None:
    """A one-line UsageError when ``pattern`` is not of ``net``'s arch, stem and gate kind."""
    if pattern is None:
        return
    if (pattern.arch, pattern.stem) != (net.arch, net.stem):
        raise UsageError(f"{where} is for {pattern.arch}/{pattern.stem}, the network is "
                         f"{net.arch}/{net.stem}")
    if pattern.gate != net.gate_spec:
        raise UsageError(f"{where}'s gates are {pattern.gate.text}, the network's "
                         f"{net.gate_spec.text}")


def deployable(net: GatedResNet, pattern: GatePattern | None = None) -> nn.Module:
    """The exportable module of ``net`` run as the compact engine's ``static`` mode runs it
    with ``pattern`` (its ``dense`` mode without one), fp32, eval mode, no gradients. Tile
    padding is not reproduced (zero channels: the same function)."""
    check_pattern(net, pattern)
    net = net.eval()
    with torch.no_grad():
        mod = Deployable(net, pattern).eval()
    for p in mod.parameters():
        p.requires_grad_(False)
    return mod


# --------------------------------------------------------------------------- what to export


@dataclass
class Source:
    """A network to export: ``net`` (eval mode), its ``pattern`` (None: the dense stream), the
    run's config (None for a pattern realised on an untrained network) and where each came
    from."""

    net: GatedResNet
    pattern: GatePattern | None
    cfg: dict | None
    checkpoint: str | None
    pattern_path: str | None
    input_size: int  # px, square images

    @property
    def mode(self) -> str:
        return "dense" if self.pattern is None else "static"


def _is_pattern_file(path: Path) -> bool:
    return path.suffix == ".json"


def load_source(source: str | os.PathLike, pattern_path: str | os.PathLike | None = None
                ) -> Source:
    """What RUN_OR_CHECKPOINT names: a training run folder (its ``checkpoint.pt``; its
    ``pattern.json`` unless ``pattern_path``), a checkpoint file (the ``pattern.json`` beside it
    unless ``pattern_path``), or a pattern file (realised on an untrained network: synthetic
    inputs). A dense run (method ``dense``) exports its dense stream. Bad input: a one-line
    UsageError, before any work."""
    from hwbench.data import info
    from hwbench.engine.realise import realise
    from hwbench.evaluate import load_run
    from hwbench.patterns import load_pattern

    src = Path(source)
    if not src.exists():
        raise UsageError(f"{source}: no such run folder, checkpoint or pattern file")
    if src.is_file() and _is_pattern_file(src):
        if pattern_path is not None:
            raise UsageError(f"{source} is a pattern file: it is exported as realised on an "
                             "untrained network and takes no --pattern")
        pattern = load_pattern(src)
        return Source(realise(pattern), pattern, None, None, str(src), pattern.input_size)
    ckpt = src / "checkpoint.pt" if src.is_dir() else src
    if not ckpt.is_file():
        raise UsageError(f"{source}: no checkpoint.pt (is it a training run folder?)")
    net, cfg, _ = load_run(ckpt)
    dense = cfg.get("method") == "dense"
    if pattern_path is None and not dense and (ckpt.parent / "pattern.json").is_file():
        pattern_path = ckpt.parent / "pattern.json"
    elif pattern_path is not None and dense:
        raise UsageError(f"{ckpt} is a dense run (no trained gates): it exports without "
                         "--pattern")
    pattern = None if pattern_path is None else load_pattern(pattern_path)
    check_pattern(net, pattern, str(pattern_path))
    size = pattern.input_size if pattern is not None else info(cfg["dataset"]).input_size
    return Source(net, pattern, cfg, str(ckpt), None if pattern_path is None else
                  str(pattern_path), size)


def check_images(src: Source, n: int = CHECK_IMAGES) -> tuple[torch.Tensor, dict]:
    """(n, 3, S, S) normalised images the equality check runs, and their record: a fixed,
    class-balanced sample of the run's data set's test split (``data.sample_images``);
    synthetic ones (``engine.pattern_inputs``, labelled so) for a realised pattern."""
    if src.cfg is None:
        from hwbench.engine.inputs import pattern_inputs

        seed = 21
        return pattern_inputs(n, src.input_size, seed=seed), {
            "source": "synthetic", "n": n, "seed": seed,
            "why": "a pattern realised on an untrained network has no data set"}
    from hwbench.data import sample_images

    cfg = src.cfg
    images, record = sample_images(cfg["dataset"], False, n, data_dir=cfg.get("data_dir"),
                                   n_synthetic=cfg.get("n_synthetic", 512),
                                   seed=cfg.get("seed", 0))
    if images.shape[-1] != src.input_size:
        raise UsageError(f"the pattern is for {src.input_size} px images, {cfg['dataset']}'s "
                         f"are {images.shape[-1]} px")
    return images, record


# --------------------------------------------------------------------------- writing, checking


def require_extra(what: str, extra: str, *modules: str) -> None:
    """A one-line UsageError naming the extra to install when one of ``modules`` cannot be
    imported (``what`` needs it)."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(f"{what} needs {name}, which is not installed: "
                             f"pip install 'hwbench[{extra}]'") from None


@contextlib.contextmanager
def _quiet():
    """torch's exporters warn that TorchScript is deprecated (torch 2.14): not the user's
    concern here, and the one-line CLI output stays readable."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def write_onnx(module: nn.Module, path: Path, input_size: int, opset: int = OPSET) -> dict:
    """``module`` as an ONNX file (TorchScript-based exporter, ``dynamo=False``: the dynamo
    exporter needs onnxscript; batch a dynamic axis, the image size fixed), checked by
    ``onnx.checker``. Returns how it was written."""
    import onnx

    dummy = torch.zeros(1, 3, input_size, input_size)
    with _quiet():
        torch.onnx.export(module, (dummy,), str(path), opset_version=opset, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    onnx.checker.check_model(str(path))
    return {"exporter": "torch.onnx.export (TorchScript-based, dynamo=False)", "opset": opset,
            "onnx_version": onnx.__version__}


def write_torchscript(module: nn.Module, path: Path, input_size: int) -> dict:
    """``module`` scripted (``torch.jit.script``: no shape is baked in) and saved."""
    with _quiet():
        torch.jit.script(module).save(str(path))
    return {"exporter": "torch.jit.script", "opset": None}


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript}


def load_runner(path: Path, fmt: str):
    """(callable (B, 3, S, S) float tensor -> (B, F) tensor, runtime record) of an exported
    file: ONNX Runtime's CPU execution provider, or ``torch.jit.load`` on the CPU."""
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

        return run, {"name": "onnxruntime", "version": ort.__version__,
                     "provider": "CPUExecutionProvider"}
    with _quiet():
        mod = torch.jit.load(str(path), map_location="cpu")

    @torch.no_grad()
    def run_ts(x: torch.Tensor) -> torch.Tensor:
        return mod(x)

    return run_ts, {"name": "torch.jit", "version": torch.__version__, "device": "cpu"}


def equality(run, src: Source, images: torch.Tensor, tolerance: float = TOLERANCE) -> dict:
    """``run`` (the exported model) against the compact engine in ``src.mode`` (fp32, CPU), one
    image per call: the worst image's max|run - engine| / max|engine|. A shape mismatch or a
    non-finite output is an error of infinity."""
    from hwbench.engine import build_engine

    engine = build_engine(src.net, src.mode, src.pattern, input_size=src.input_size)
    worst = 0.0
    for x in images.split(1):
        x = x.contiguous().float()
        ref, got = engine(x).float().cpu(), run(x).float()
        if got.shape != ref.shape or not bool(torch.isfinite(got).all()):
            worst = float("inf")
            break
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30)))
    return {"max_rel_err": worst, "tolerance": tolerance, "passed": worst <= tolerance,
            "metric": ERROR_METRIC, "dtype": "fp32", "batch_size": 1,
            "reference": f"hwbench CompactEngine, {src.mode} mode, fp32, cpu"}


@contextlib.contextmanager
def _staging(out: Path):
    """A temporary folder in ``out``'s nearest existing ancestor (no folder is created before
    the export passes), removed on the way out (whatever is left in it)."""
    base = out.parent
    while not base.exists():
        base = base.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=base))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path) -> None:
    """Move the staged files into ``out``: one rename of the folder when ``out`` is new, else a
    rename per file with ``model.json`` last (its presence means the export is whole)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
        return
    for f in sorted(tmp.iterdir(), key=lambda p: p.name == METADATA):
        os.replace(f, out / f.name)


# --------------------------------------------------------------------------- the command


def metadata(src: Source, fmt: str, written: dict, check: dict) -> dict:
    """``model.json``: what the file is, what it computes, and the equality check's result."""
    from hwbench.data import info
    from hwbench.flops import UNIT, dense_report, pattern_report

    size, net = src.input_size, src.net
    macs = {"unit": f"{UNIT} per image", "dense": dense_report(net.arch, net.stem,
                                                              size).dense_macs,
            "source": "hwbench.flops: convs (stem, blocks, downsample) and, gated, the gates; "
                      "1 MAC = 2 FLOPs"}
    if src.pattern is not None:
        rep = pattern_report(src.pattern)
        macs.update(pattern=rep.gated_macs, ratio=rep.ratio,
                    pattern_note="expected per image under the pattern: always-on channels "
                                 "fully, dynamic ones at their on-rates, gates included")
    norm = None
    if src.cfg is not None:
        meta = info(src.cfg["dataset"])
        norm = {"dataset": meta.name, "mean": list(meta.mean), "std": list(meta.std),
                "note": "(pixels / 255 - mean) / std, per RGB channel"}
    return {
        "schema": SCHEMA, "format": fmt, "file": FILES[fmt], **written,
        "torch_version": torch.__version__, "hwbench_version": __version__,
        "arch": net.arch, "stem": net.stem, "input_size": size,
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32",
                  "normalisation": norm},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", net.num_features],
                   "dtype": "float32", "what": "pooled backbone features (no head)"},
        "gate": net.gate_spec.to_dict(), "mode": src.mode,
        "pattern": None if src.pattern is None else src.pattern.to_dict(),
        "macs": macs,
        "source": {"checkpoint": src.checkpoint, "pattern": src.pattern_path,
                   "dataset": None if src.cfg is None else src.cfg["dataset"],
                   "trained": src.cfg is not None},
        "check": check,
    }


def export(source: str | os.PathLike, out_dir: str | os.PathLike, fmt: str,
           pattern_path: str | os.PathLike | None = None, images: int = CHECK_IMAGES) -> dict:
    """Export RUN_OR_CHECKPOINT ``source`` (``load_source``) to ``out_dir`` as ``fmt``
    (``onnx`` | ``torchscript``): ``model.onnx`` / ``model.pt`` and ``model.json``, written
    only when the file, loaded back, equals the engine within ``TOLERANCE`` on ``images``
    images (else ``EqualityError``, nothing written). Returns the metadata (plus ``written``)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_extra("--format onnx", "onnx", "onnx", "onnxruntime")
    if images < 1:
        raise UsageError(f"the equality check needs at least 1 image, got {images}")
    from hwbench.io import check_writable

    out = check_writable(out_dir, folder=True)
    src = load_source(source, pattern_path)
    xs, record = check_images(src, images)
    module = deployable(src.net, src.pattern)
    with _staging(out) as tmp:
        path = tmp / FILES[fmt]
        written = WRITERS[fmt](module, path, src.input_size)
        run, runtime = load_runner(path, fmt)
        check = {**equality(run, src, xs), "images": record, "runtime": runtime}
        if not check["passed"]:
            raise EqualityError(
                f"the exported {fmt} model is not the engine's function: max relative error "
                f"{check['max_rel_err']:.3g} > {TOLERANCE:g} on {record['n']} {record['source']} "
                f"images ({src.mode} mode); nothing written")
        meta = metadata(src, fmt, written, check)
        (tmp / METADATA).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _publish(tmp, out)
    return {**meta, "written": {"model": str(out / FILES[fmt]), "metadata": str(out / METADATA)}}


def load_metadata(path: str | os.PathLike) -> dict:
    """An export's ``model.json`` (``path``: the file or its folder); a one-line UsageError when
    it is missing or not one."""
    p = Path(path)
    p = p / METADATA if p.is_dir() else p
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{p}: no such file (not an hwbench export?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{p}: not a readable model.json ({exc})") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise UsageError(f"{p}: not an hwbench export (schema {SCHEMA!r} expected)")
    return meta


def exported_pattern(meta: dict) -> GatePattern | None:
    """The pattern an export was made with (None: the dense stream)."""
    raw = meta.get("pattern")
    return None if raw is None else GatePattern.from_dict(raw, f"{METADATA} pattern")
