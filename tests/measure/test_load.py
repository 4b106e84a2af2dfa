"""How busy the machine was: others' CPU time and steal between two snapshots, judged near the
thresholds; /proc/stat read from a file in its real format."""

import pytest

from hwbench.measure.load import BUSY_CORES, BUSY_STEAL, Snapshot, describe, read_proc_stat, window


def snap(wall, busy, steal=0.0, total=None, own=0.0, cpus=2):
    return Snapshot(wall_s=wall, busy_s=busy, steal_s=steal,
                    total_s=total if total is not None else 2 * wall, own_s=own, cpus=cpus)


@pytest.mark.parametrize("others,busy", [(BUSY_CORES - 0.01, False), (BUSY_CORES, True),
                                         (1.9, True), (0.0, False)])
def test_others_cpu_time_is_the_machines_less_this_process(others, busy):
    # 10 s: this process used 1.5 cores (15 s), others ``others`` cores
    a = snap(100.0, 1000.0, own=50.0)
    b = snap(110.0, 1000.0 + 15.0 + 10 * others, own=65.0, total=1000.0 + 20.0)
    w = window(a, b)
    assert w["others_cores"] == pytest.approx(others, abs=1e-9)
    assert w["busy"] is busy and w["wall_s"] == pytest.approx(10.0)
    assert bool(describe(w)) is busy


@pytest.mark.parametrize("share,busy", [(BUSY_STEAL - 0.001, False), (BUSY_STEAL, True)])
def test_steal_alone_makes_a_window_busy(share, busy):
    a = snap(0.0, 0.0, steal=0.0, total=0.0)
    b = snap(10.0, 15.0, steal=20.0 * share, total=20.0, own=15.0)
    w = window(a, b)
    assert w["steal_share"] == pytest.approx(share) and w["busy"] is busy


def test_nothing_is_judged_without_both_snapshots():
    assert window(None, snap(1.0, 1.0)) is None and window(snap(1.0, 1.0), None) is None
    assert window(snap(2.0, 1.0), snap(1.0, 1.0)) is None
    assert describe(None) == ""


def test_proc_stat_is_read_in_its_real_format(tmp_path):
    f = tmp_path / "stat"
    f.write_text("cpu  2430957 399 82134 606317 25648 0 2018 5077 0 0\n"
                 "cpu0 1215478 199 41067 303158 12824 0 1009 2538 0 0\nintr 1 2 3\n")
    assert read_proc_stat(str(f)) == [2430957, 399, 82134, 606317, 25648, 0, 2018, 5077, 0, 0]
    f.write_text("intr 1 2 3\n")
    assert read_proc_stat(str(f)) is None
    assert read_proc_stat(str(tmp_path / "missing")) is None
