"""What a report reads: device profiles and training run directories, found in the paths given.

Only exported files are read (JSON/CSV/JSONL written by ``profile``, ``train``, ``verify`` and
``eval``); nothing here runs a network. Anything that is not usable is *skipped with a reason*
(kept in ``Inputs.skipped``) so that one stray file never stops a report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hwbench.engine.runtimes.registry import DEFAULT_RUNTIME, is_graph, of
from hwbench.errors import UsageError
from hwbench.pattern.gate_pattern import SCHEMA as PATTERN_SCHEMA
from hwbench.profile.predictor import SCHEMA as PROFILE_SCHEMA
from hwbench.profile.predictor import ProfileError, load_profile

RUN_MARKERS = ("summary.json", "metrics.jsonl")
# results of `hwbench compare` ("compare") and of the benchmark it replaced
COMPARISON = "dynamic_vs_static"
COMPARISONS = (COMPARISON, "compare")
COMPARISON_KEYS = {"target_ms", "method", "p50_ms", "p90_ms", "macs_ratio", "knn_top1", "knn_n",
                   "epochs", "seed"}
EAGER_LABEL = "eager (hwbench engine)"  # a profile's runtime when it names none (older profiles)


def record_label(record) -> str:
    """The label of a runtime record (``runtime_record``: a dict), a runtime name, or nothing
    (eager): ``eager (hwbench engine)`` or ``<runtime> <version>``."""
    name = of(record)
    version = record.get("runtime_version") if isinstance(record, dict) else None
    if name == DEFAULT_RUNTIME:
        return EAGER_LABEL
    return f"{name} {version}" if version else str(name)


@dataclass
class Profile:
    path: str
    data: dict

    @property
    def fingerprint(self) -> dict:
        return self.data["fingerprint"]

    @property
    def hardware(self) -> str:
        """The device alone: name, threads or GPU, dtype."""
        fp = self.fingerprint
        name = str(fp.get("name") or fp.get("type"))
        where = f"{fp['threads']} threads" if fp.get("type") == "cpu" and fp.get("threads") \
            else str(fp.get("type", ""))
        return f"{name} ({where}, {fp.get('dtype', 'fp32')})"

    @property
    def runtime(self) -> str:
        """What ran the networks; a profile older than runtimes was run eagerly."""
        return of(self.fingerprint)

    @property
    def runtime_label(self) -> str:
        """``eager (hwbench engine)`` or ``<runtime> <version>`` (``onnxruntime 1.32.0``)."""
        return record_label({"runtime": self.runtime,
                             "runtime_version": self.fingerprint.get("runtime_version")})

    @property
    def device(self) -> str:
        """The label a series carries in every table and figure, and the key it is grouped by:
        the hardware, then `` · <runtime> <version>`` unless eager (eager keeps the label of
        every profile taken before runtimes existed), so two runtimes never merge."""
        if not is_graph(self.runtime):
            return self.hardware
        return f"{self.hardware} · {self.runtime_label}"

    @property
    def setting(self) -> str:
        """What was measured on the device: arch, stem, input size, batch size."""
        fp = self.fingerprint
        return f"{fp['arch']} {fp['stem']} {fp['input_size']}px b{fp.get('batch_size', 1)}"

    @property
    def conditions(self) -> tuple:
        fp = self.fingerprint
        return fp["arch"], fp["stem"], fp["input_size"]


@dataclass
class Run:
    path: str
    name: str
    config: dict
    metrics: list[dict]
    summary: dict | None = None
    energy: dict | None = None
    verify: dict | None = None
    pattern: dict | None = None
    eval: dict | None = None
    final: dict | None = None  # RUN/final.json: the delivered network and its verdict
    # hwbench trim's results inside the run (RUN/trim-<target>/): name, summary, verify
    trims: list[dict] = field(default_factory=list)

    @property
    def t_d(self) -> float | None:
        return self.config.get("t_d")

    @property
    def evaluated(self) -> dict:
        """Top-1 (%) per (metric, stream) from the last epoch's kNN and eval.json's probes."""
        out = {}
        last = next((r for r in reversed(self.metrics) if any(k.startswith("knn_top1_")
                                                             for k in r)), {})
        src = {**last, **((self.summary or {}).get("final") or {})}
        for stream in ("dense", "gated"):
            if src.get(f"knn_top1_{stream}") is not None:
                out[("knn_top1", stream)] = float(src[f"knn_top1_{stream}"])
        ev = self.eval or {}
        for stream in ("dense", "gated"):
            for metric in ("knn_top1", "linear_top1"):
                if ev.get(f"{metric}_{stream}") is not None:  # eval.json (hwbench eval)
                    out[(metric, stream)] = float(ev[f"{metric}_{stream}"])
        return out


@dataclass
class Inputs:
    profiles: list[Profile] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # hwbench compare results: (path, rows), one row per target x method
    comparisons: list[tuple[str, list[dict]]] = field(default_factory=list)

    def skip(self, path, reason: str) -> None:
        self.skipped.append((str(path), reason))


def _json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run: the earlier epochs still count
        if isinstance(row, dict):
            rows.append(row)
    return rows


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in RUN_MARKERS)


def load_run(path: Path) -> Run | str:
    """A run directory, or the reason it cannot be used."""
    summary = _json(path / "summary.json")
    config = _json(path / "config.json") or (summary or {}).get("config")
    if not isinstance(config, dict) or "dataset" not in config:
        return "a run directory without a readable config.json"
    metrics = _jsonl(path / "metrics.jsonl")
    run = Run(path=str(path), name=path.name, config=config, metrics=metrics,
              summary=summary if isinstance(summary, dict) else None,
              energy=_json(path / "energy.json"), verify=_json(path / "verify.json"),
              eval=_json(path / "eval.json"))
    final = _json(path / "final.json")
    if isinstance(final, dict) and str(final.get("schema", "")).startswith("hwbench/final@"):
        run.final = final
    pat = _json(path / "pattern.json")
    if isinstance(pat, dict) and pat.get("schema") == PATTERN_SCHEMA:
        run.pattern = pat
    if not metrics and run.summary is None:
        return "a run directory with no finished epoch (metrics.jsonl is empty)"
    for t in sorted(path.glob("trim-*")):
        summary, verify = _json(t / "summary.json"), _json(t / "verify.json")
        if isinstance(summary, dict) and isinstance(verify, dict):
            run.trims.append({"name": t.name, "summary": summary, "verify": verify})
    return run


def _classify_file(path: Path, inputs: Inputs) -> None:
    obj = _json(path)
    if obj is None:
        inputs.skip(path, "not readable JSON")
        return
    schema = obj.get("schema") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and obj.get("benchmark") in COMPARISONS:
        rows = obj.get("rows")
        if isinstance(rows, list) and all(isinstance(r, dict) and COMPARISON_KEYS <= set(r)
                                          for r in rows):
            inputs.comparisons.append((str(path), rows))
        else:
            inputs.skip(path, f"a {obj['benchmark']} result without rows of "
                              f"{', '.join(sorted(COMPARISON_KEYS))}")
    elif schema == PROFILE_SCHEMA:
        try:
            inputs.profiles.append(Profile(str(path), load_profile(path)))
        except ProfileError as exc:
            inputs.skip(path, f"a malformed device profile ({exc})")
    elif isinstance(schema, str) and schema.startswith("hwbench/device-profile@"):
        inputs.skip(path, f"a device profile of an unknown schema version ({schema}); this "
                          f"hwbench reads {PROFILE_SCHEMA}")
    elif schema == PATTERN_SCHEMA:
        inputs.skip(path, "a gate pattern, not a profile or run (patterns are read through "
                          "their run directory)")
    else:
        inputs.skip(path, "neither a device profile nor a training run")


def _walk(path: Path, inputs: Inputs, explicit: bool) -> None:
    if is_run_dir(path):
        run = load_run(path)
        if isinstance(run, Run):
            inputs.runs.append(run)
        else:
            inputs.skip(path, run)
    elif path.is_dir():
        children = sorted(p for p in path.iterdir() if not p.name.startswith("."))
        found = [p for p in children if p.is_dir() or p.suffix == ".json"]
        if not found and explicit:
            inputs.skip(path, "an empty folder (no profiles or runs inside)")
        for child in found:
            _walk(child, inputs, explicit=False)
    elif path.is_file():
        if path.suffix == ".json" or explicit:
            _classify_file(path, inputs)
    else:
        inputs.skip(path, "no such file or folder")


def _add_run_profiles(inputs: Inputs) -> None:
    """A run's report needs the profile its target was picked from and verified against: read
    those files too when they exist and were not named."""
    have = {Path(p.path).resolve() for p in inputs.profiles}
    for r in inputs.runs:
        for ref in ((r.config.get("decision") or {}).get("profile"),
                    (r.verify or {}).get("profile")):
            if not ref or not Path(ref).is_file() or Path(ref).resolve() in have:
                continue
            try:
                inputs.profiles.append(Profile(str(ref), load_profile(ref)))
                have.add(Path(ref).resolve())
            except ProfileError as exc:
                inputs.skip(ref, f"the profile of run {r.name} is malformed ({exc})")


def discover(paths: list[str | Path]) -> Inputs:
    """Profiles and runs in ``paths`` (files, run directories, or folders searched
    recursively), plus the profiles the runs name. Each file is read once, however many paths
    name it."""
    if not paths:
        raise UsageError("name at least one profile, run directory or folder to report on")
    inputs = Inputs()
    for p in paths:
        _walk(Path(p), inputs, explicit=True)
    _add_run_profiles(inputs)
    seen, profiles, runs = set(), [], []
    for item in inputs.profiles + inputs.runs:
        key = Path(item.path).resolve()
        if key in seen:
            continue
        seen.add(key)
        (profiles if isinstance(item, Profile) else runs).append(item)
    inputs.profiles = sorted(profiles, key=lambda p: (p.device, p.path))
    inputs.runs = sorted(runs, key=lambda r: (r.name, r.path))
    if not inputs.profiles and not inputs.runs and not inputs.comparisons:
        why = "; ".join(f"{p}: {r}" for p, r in inputs.skipped[:3]) or "nothing found"
        raise UsageError(f"nothing to report on ({why})")
    return inputs
