"""``hwbench export``: the deployable network, in a file a runtime loads (ONNX, TorchScript).

The network exported is ``hwbench.engine.deployable.deployable(net, pattern)``: a plain-torch
module computing what the compact engine's ``static`` mode computes (fp32; the dense stream
without a pattern; width-gated networks as one graph with the nested mask).

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
from torch import nn

from hwbench import __version__
from hwbench.data import info, sample_images
from hwbench.engine import build_engine
from hwbench.engine.deployable import (  # noqa: F401  (re-exported: export's public names)
    Deployable,
    DeployBlock,
    DeployGate,
    check_pattern,
    deployable,
)
from hwbench.engine.inputs import pattern_inputs
from hwbench.engine.realise import realise
from hwbench.engine.runtimes import (
    CHECKER,
    RUNTIMES,
    Session,
    is_graph,
    require_extra,
    runtime_record,
)
from hwbench.engine.runtimes.deployment import deploy_on
from hwbench.errors import HwbenchError, UsageError
from hwbench.io import check_writable
from hwbench.nets.resnet import GatedResNet
from hwbench.pattern.gate_pattern import GatePattern, load_pattern
from hwbench.pattern.macs import UNIT, dense_report, pattern_report
from hwbench.train.evaluation import load_run

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

        seed = 21
        return pattern_inputs(n, src.input_size, seed=seed), {
            "source": "synthetic", "n": n, "seed": seed,
            "why": "a pattern realised on an untrained network has no data set"}

    cfg = src.cfg
    images, record = sample_images(cfg["dataset"], False, n, data_dir=cfg.get("data_dir"),
                                   n_synthetic=cfg.get("n_synthetic", 512),
                                   seed=cfg.get("seed", 0))
    if images.shape[-1] != src.input_size:
        raise UsageError(f"the pattern is for {src.input_size} px images, {cfg['dataset']}'s "
                         f"are {images.shape[-1]} px")
    return images, record


# --------------------------------------------------------------------------- writing, checking


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
    import onnx  # the optional "onnx" extra

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


def load_runner(path: Path, fmt: str, runtime: str = CHECKER):
    """(callable (B, 3, S, S) float tensor -> (B, F) tensor, runtime record) of an exported
    file: ONNX on ``runtime`` (ONNX Runtime's CPU provider or OpenVINO's CPU device, 1 thread,
    fp32: ``hwbench.engine.runtimes.Session``), or TorchScript through ``torch.jit.load``."""
    if fmt == "onnx":

        sess = Session(path.read_bytes(), runtime, threads=1)

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(sess(x.numpy())[0])

        rec = runtime_record(runtime, 1)
        return run, {"name": runtime, "version": rec["runtime_version"],
                     "provider": rec["provider"]}
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
    size, net = src.input_size, src.net
    macs = {"unit": f"{UNIT} per image", "dense": dense_report(net.arch, net.stem,
                                                              size).dense_macs,
            "source": "hwbench.pattern.macs: convs (stem, blocks, downsample) and, gated, "
                      "the gates; 1 MAC = 2 FLOPs"}
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


def _check_on(fmt: str, check_on: tuple[str, ...] | None) -> tuple[str, ...]:
    """The runtimes the equality check runs on (one-line errors; a missing extra named)."""
    if fmt != "onnx":
        if check_on:
            raise UsageError(f"--check-on names ONNX runtimes; a {fmt} export is checked with "
                             "torch.jit.load")
        return ("torch.jit",)
    require_extra("--format onnx", "onnx", "onnx")
    runtimes = tuple(dict.fromkeys(check_on or (CHECKER,)))
    for rt in runtimes:
        if not is_graph(rt):
            graphs = ", ".join(n for n in RUNTIMES if is_graph(n))
            raise UsageError(f"--check-on {rt}: the exported file is checked on a runtime that "
                             f"loads it ({graphs})")
        deploy_on("cpu", rt)  # the extra installed; graph runtimes run on the CPU
    return runtimes


def _checked(path: Path, fmt: str, runtimes: tuple[str, ...], src: Source, xs, record) -> dict:
    """The equality check on every runtime (the first one's result on top, all under
    ``on_runtimes``); ``EqualityError`` naming the first that fails."""
    checks = []
    for rt in runtimes:
        run, runtime = load_runner(path, fmt, rt) if fmt == "onnx" else load_runner(path, fmt)
        check = {**equality(run, src, xs), "images": record, "runtime": runtime}
        if not check["passed"]:
            raise EqualityError(
                f"the exported {fmt} model on {runtime['name']} is not the engine's function: "
                f"max relative error {check['max_rel_err']:.3g} > {TOLERANCE:g} on "
                f"{record['n']} {record['source']} images ({src.mode} mode); nothing written")
        checks.append(check)
    return {**checks[0], "on_runtimes": [{"runtime": c["runtime"],
                                          "max_rel_err": c["max_rel_err"],
                                          "passed": c["passed"]} for c in checks]}


def export(source: str | os.PathLike, out_dir: str | os.PathLike, fmt: str,
           pattern_path: str | os.PathLike | None = None, images: int = CHECK_IMAGES,
           check_on: tuple[str, ...] | None = None) -> dict:
    """Export RUN_OR_CHECKPOINT ``source`` (``load_source``) to ``out_dir`` as ``fmt``
    (``onnx`` | ``torchscript``): ``model.onnx`` / ``model.pt`` and ``model.json``, written
    only when the file, loaded back (an ONNX file on each runtime of ``check_on``; default
    ONNX Runtime), equals the engine within ``TOLERANCE`` on ``images`` images (else
    ``EqualityError``, nothing written). Returns the metadata (plus ``written``)."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    runtimes = _check_on(fmt, check_on)
    if images < 1:
        raise UsageError(f"the equality check needs at least 1 image, got {images}")

    out = check_writable(out_dir, folder=True)
    src = load_source(source, pattern_path)
    xs, record = check_images(src, images)
    module = deployable(src.net, src.pattern)
    with _staging(out) as tmp:
        path = tmp / FILES[fmt]
        written = WRITERS[fmt](module, path, src.input_size)
        check = _checked(path, fmt, runtimes, src, xs, record)
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
