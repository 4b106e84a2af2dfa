"""What every column of every report table means, with its unit: the tables' schemas (one entry
per table: what one row is, and each column's meaning). ``hwbench.report.tables`` builds the rows;
the report's README of columns is written from here."""

from __future__ import annotations

_SETTING = "arch, stem, input size (px) and batch size the profile measured"
_DEVICE = ("series label: the device (name, threads or GPU, dtype), then ' · <runtime> "
           "<version>' unless eager; the key every table and figure groups by, so two runtimes "
           "never merge")
_HARDWARE = "the device alone (name, threads or GPU, dtype), without the runtime"
_RUNTIME = ("what ran the networks: 'eager (hwbench engine)' (also a profile naming no runtime) "
            "or '<runtime> <version>' (onnxruntime, openvino)")
RUNTIME_T_D = (0.3, 0.5)  # the t_d at which the runtimes table compares runtimes

# name -> (what one row is, {column: meaning with unit})
SCHEMAS: dict[str, tuple[str, dict[str, str]]] = {
    "summary": ("one device x runtime x latency target", {
        "device": _DEVICE, "runtime": _RUNTIME, "setting": _SETTING,
        "target_ms": "latency target (ms), from a run's decision or --target-latency",
        "percentile": "the latency percentile the target is judged on (p50/p90/p99)",
        "t_d": "the t_d pick chooses for the target (empty: none meets it)",
        "predicted_ms": "the predicted latency pick decided on (ms; the table's monotone "
                        "envelope)",
        "rule": "the decision rule (pick.t_d.RULE: pick, train and this table share it)",
        "swept_t_d": "the largest profiled t_d at or under t_d with a valid measurement",
        "measured_ms": "swept_t_d's measured latency at the percentile (ms), profile sweep",
        "macs_ratio": "swept_t_d's pattern's gated/dense MACs ratio",
        "energy_j": "J per inference (per image) of that pattern, total (idle included)",
        "energy_source": "measured (counter) or estimated (model), and the method",
        "gated_top1_pct": "best gated top-1 (%) of a run trained at that t_d (empty: none)",
        "top1_source": "run and metric of gated_top1_pct",
        "learned_ms": "that run's learned network, measured at the percentile by verify (ms): "
                      "measured_ms is the profile's prior pattern, this is the trained one",
        "learned_met": "learned_ms <= target_ms (empty: not verified)"}),
    "latency": ("one device x runtime x mode x t_d (profile sweep and references)", {
        "device": _DEVICE, "hardware": _HARDWARE, "runtime": _RUNTIME, "setting": _SETTING,
        "profile": "profile file",
        "batch_size": "images per inference", "input_size": "input height = width (px)",
        "mode": "dynamic (eager: the compact engine, skipped channels are not computed; on a "
                "runtime: its graph, channel gates masked, width gates per width bucket when "
                "faster), dense, or masked (gates computed, skipped channels zeroed: full conv "
                "cost)",
        "t_d": "the pattern's budget (empty for dense/masked references)",
        "macs_ratio": "gated/dense MACs of the pattern (masked: 1, it computes every MAC)",
        "n": "timed runs", "p10_ms": "10th percentile latency (ms)",
        "p50_ms": "median latency (ms)", "p90_ms": "90th percentile latency (ms)",
        "p99_ms": "99th percentile latency (ms)", "valid": "the protocol's validity flag"}),
    "delivered": ("one latency-target run: what it delivered (RUN/final.json)", {
        "run": "the run", "network": "the delivered network (trim-<target> or deployed)",
        "verdict": "MET, UNDERSHOT, MISSED, NO DECISION or DEGRADED (hwbench.deploy.verdict)",
        "target": "the target (0.67x: of the dense latency measured alongside; or ms)",
        "percentile": "the percentile decided on", "band": "the landing band, x target",
        "measured_ratio": "measured / dense at the percentile",
        "measured_ms": "measured latency at the percentile (ms)", "runtime": _RUNTIME,
        "knn_gated": "kNN top-1 (%) of the delivered gated network (the function timed)",
        "knn_dense_stream": "kNN top-1 (%) of the run's dense stream",
        "knn_random_init": "kNN top-1 (%) of the randomly initialised network (the floor)",
        "baseline": "the obvious alternative landed on the same target (--baseline thin)",
        "baseline_measured_ratio": "the baseline's measured / dense",
        "baseline_verdict": "the baseline's latency verdict",
        "baseline_knn": "the baseline's kNN top-1 (%)"}),
    "targets": ("one run with a latency target", {
        "run": "run directory name", "device": "the target device's series label (device, "
                                               "then its runtime unless eager)",
        "setting": _SETTING, "profile": "the profile the target was picked from",
        "target_ms": "latency target (ms)", "percentile": "p50/p90/p99",
        "t_d": "the t_d the run trained at", "predicted_ms": "profile's prediction (ms)",
        "measured_ms": "verify's measurement of the learned network (ms; empty: not verified)",
        "met": "verify's decision: measured within [0.90, 1.00] x target (verify files from "
               "before the band: measured <= target) on a valid measurement of the percentile "
               "(a relative target: as a ratio to the dense network measured alongside; "
               "empty: not verified, or no valid measurement)",
        "error": "measured / target - 1, in the target's own terms (ratio or ms)",
        "budget": "flops (the paper's MACs budget t_d) or "
                                                    "latency (trained against the profile)",
        "gated_top1_pct": "the run's last gated kNN top-1 (%)",
        "stage": "trained (the network training produced) or trimmed (hwbench trim: least-used "
                 "channels switched off until the measured latency lands under the target)"}),
    "macs_vs_latency": ("one measured pattern x mode (per device and runtime)", {
        "device": _DEVICE, "hardware": _HARDWARE, "runtime": _RUNTIME, "setting": _SETTING,
        "mode": "dynamic or masked", "source":
        "sweep (uniform pattern at t_d), validation (random mixed pattern), learned (a trained "
        "network, verify), masked (reference)", "pattern": "pattern name or run",
        "macs_ratio": "gated/dense MACs", "latency_ratio": "measured p50 / dense p50 "
        "(same device, same measurement phase)"}),
    "energy": ("one device x runtime x mode x t_d x quantity", {
        "device": _DEVICE, "setting": _SETTING, "mode": "dense or dynamic",
        "t_d": "budget (empty: dense)",
        "quantity": "total (idle power included) or above_idle (idle power subtracted)",
        "energy_j": "J per inference (per image)",
        "method": "energy source: nvml-counter, rapl (measured) or codecarbon-estimate",
        "measured": "True: a hardware counter; False: an estimate from a power model",
        "window_s": "measuring window (s)", "inferences": "inferences in the window",
        "idle_w": "idle power measured before the windows (W)"}),
    "accuracy": ("one run x stream x metric x device", {
        "run": "run directory name", "dataset": "data set", "t_d": "budget the run trained at",
        "stream": "dense or gated", "metric": "knn_top1 (kNN by the run's --knn protocol, "
                                             "cosine k 20 by default; eval.json's protocol.knn "
                                             "names it) or linear_top1 (linear probe, hwbench "
                                             "eval)",
        "top1_pct": "top-1 accuracy (%) on the data set's test split", "device": _DEVICE,
        "setting": _SETTING,
        "p90_ms": "measured p90 latency (ms) of that stream on that device",
        "latency_source": "verify (the learned network, on the runtime the device label "
                          "names) or profile-dense (the dense reference of that device's "
                          "profile)",
        "energy_j": "J per inference on that device (dense reference or the profile's pattern "
                    "at the same t_d; empty when not profiled)",
        "energy_source": "measured/estimated and method; 'prior pattern' marks the profile's "
                         "synthetic pattern at t_d, not the learned one"}),
    "channels": ("one run x gated layer x channel group", {
        "run": "run directory name", "t_d": "budget", "layer": "gated block",
        "group": "always_off, always_on or dynamic (data-dependent)",
        "channels": "number of the block's intermediate channels in the group",
        "fraction": "channels / the block's gated channels"}),
    "training_energy": ("one run x component", {
        "run": "run directory name", "component": "cpu, gpu or ram",
        "energy_kwh": "energy over all launches of the run (kWh)",
        "method": "measured (counter) or estimated (codecarbon model), as codecarbon reported",
        "country": "country of the CO2e intensity", "emissions_kg_co2e":
        "run total CO2e (kg), repeated on each component row", "duration_s": "tracked time (s)"}),
    "training_curves": ("one run x epoch x metric", {
        "run": "run directory name", "epoch": "epoch (0-based)",
        "metric": "loss, vicreg, sparsity, bound, macs_ratio (training, noisy gates), "
                  "deployed_macs_ratio (training, noise-free decisions), knn_top1_dense/gated "
                  "(%), eval_macs_ratio (test split, hard gates), latency_ms_i (--budget latency:"
                  " predicted latency on target device i, ms)",
        "value": "the metric's value at the end of the epoch"}),
    "dynamic_vs_static": ("one latency target x method (hwbench compare)", {
        "source": "the results file", "target": "the target as given (0.6x: of the dense p90)",
        "target_ms": "the target in ms against the dense p90 measured alongside",
        "method": "thin (a thinner dense network, --width-mult), channel (per-channel gates, "
                  "--budget latency, trimmed), width (width gates, --budget latency) or pruned "
                  "(a dense network pruned by Torch-Pruning, fine-tuned)",
        "p50_ms": "measured median latency (ms, batch 1, real test images)",
        "p90_ms": "measured p90 latency (ms)", "ratio_p90": "p90 / the dense p90 measured "
        "alongside", "landed": "inside the band [0.90, 1.00] x target on a valid p90 "
        "(compare; the older benchmark: within +-5%)",
        "macs_ratio": "MACs of the timed network / dense MACs (expected over inputs)",
        "knn_top1": "kNN top-1 (%) of the timed network on the test split",
        "knn_se": "its standard error (percentage points, sqrt(p(1-p)/n))",
        "knn_n": "test images", "epochs": "training epochs", "seed": "seed"}),
    "predictor": ("one predicted + measured pattern (per device and runtime)", {
        "device": _DEVICE, "runtime": _RUNTIME, "setting": _SETTING,
        "source": "validation (out-of-sample random patterns), sweep, or learned (verify)",
        "pattern": "pattern name or run", "predicted_ratio": "predicted p50 / dense p50",
        "measured_ratio": "measured p50 / dense p50", "error": "predicted/measured - 1"}),
    "runtimes": ("one profile: a device x runtime, side by side (all numbers measured)", {
        "device": _DEVICE, "hardware": _HARDWARE, "setting": _SETTING, "runtime": _RUNTIME,
        "provider": "the runtime's execution provider or device (empty: eager)",
        "runtime_threads": "threads the runtime was given (empty: eager, see the device label)",
        "profile": "profile file",
        "dense_p50_ms": "the dense network's median latency (ms), measured with this runtime",
        **{f"latency_ratio_td{t:g}": f"measured p50 at t_d {t:g} / dense p50, same runtime "
                                     "(profile sweep; empty: t_d not swept)" for t in RUNTIME_T_D},
        **{f"efficiency_td{t:g}": f"(dense p50 / p50) / (dense MACs / MACs) at t_d {t:g}, "
                                  "measured: 1 = time falls as MACs do, below 1 = MACs saved "
                                  "are not all time saved" for t in RUNTIME_T_D},
        "validation_n": "random mixed patterns measured to validate the predictor",
        "within_10pct": "share (0-1) of them whose predicted latency ratio is within +-10% of "
                        "the measured one (out of sample, this runtime's table)",
        "within_5pct": "the same within +-5% (0-1)"}),
}
