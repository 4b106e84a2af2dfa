import numpy as np
import pytest
import torch

from hwbench.errors import UsageError
from hwbench.measure.device import fingerprint, parse_device
from hwbench.measure.stats import summarise
from hwbench.measure.timer import time_interleaved


def test_interleaved_rounds_call_every_function_once_per_round_in_varying_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    samples = time_interleaved(fns, warmup=2, min_warmup_s=0.0, min_runs=20, max_time_s=0.0)
    assert {k: len(v) for k, v in samples.items()} == dict.fromkeys("abcd", 20)
    assert calls[:8] == list("abcdabcd")  # warm-up, in order
    rounds = [calls[8 + 4 * i: 12 + 4 * i] for i in range(20)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order is shuffled between rounds
    assert all(s >= 0 for v in samples.values() for s in v)


def test_max_runs_caps_and_progress_reports_rounds():
    seen = []
    samples = time_interleaved({"a": lambda: None}, warmup=0, min_warmup_s=0.0, min_runs=5,
                               max_time_s=1e9, max_runs=7, progress=seen.append)
    assert len(samples["a"]) == 7 and seen == list(range(1, 8))


def test_summary_of_known_samples():
    s = summarise([float(i) for i in range(1, 101)])
    assert s.n == 100 and s.p50_ms == 50.5 and s.min_ms == 1.0
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == 50.5 and s.stdev_ms == pytest.approx(np.std(range(1, 101), ddof=1))


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:x", "", "CPU"])
def test_unknown_devices(spec):
    with pytest.raises(UsageError, match="unknown device"):
        parse_device(spec)


def test_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UsageError, match="no CUDA GPU"):
        parse_device("cuda")


def test_cuda_index_out_of_range(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parse_device("cuda:0").type == "cuda"
    with pytest.raises(UsageError, match="only 1 CUDA device"):
        parse_device("cuda:3")


def test_cpu_fingerprint():
    fp = fingerprint(torch.device("cpu"), threads=2)
    assert fp["type"] == "cpu" and fp["threads"] == 2 and fp["name"] and fp["torch"]


def test_cuda_samples_are_bracketed_by_synchronisations(monkeypatch):
    # A fake CUDA: count synchronise calls around each timed call.
    from hwbench.measure import timer

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    timer.time_once(lambda: events.append("call"), torch.device("cuda"))
    assert events == ["sync", "call", "sync"]
    events.clear()
    timer.time_once(lambda: events.append("call"), torch.device("cpu"))
    assert events == ["call"]


def test_ci_target_stops_early_on_steady_samples():
    import itertools

    from hwbench.measure import timer

    ticks = itertools.count()
    samples = time_interleaved({"a": lambda: next(ticks)}, warmup=0, min_warmup_s=0.0,
                               min_runs=16, max_time_s=1e9, ci_target=10.0, max_runs=10_000)
    assert len(samples["a"]) == 16  # the (generous) CI target holds at the first check
    assert timer.timer_overhead_ms(n=10) >= 0


def test_torch_threads_restores_the_thread_count():
    from hwbench.measure.device import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
