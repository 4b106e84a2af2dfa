"""hwbench.pipeline: the deployed network against training's own estimate."""

import pytest

from hwbench.pipeline import fidelity


def _verify(macs: float, p90: float) -> dict:
    return {"percentile": "p90", "macs_ratio": macs, "predicted": {"p90_ms": p90}}


@pytest.mark.parametrize("macs,ms,within", [
    (0.34 * 1.049, 17.0 * 0.951, True),  # just inside 5 % on both
    (0.34 * 1.051, 17.0, False),  # MACs just outside
    (0.34, 17.0 * 0.949, False),  # latency just outside
    (0.18, 12.0, False),  # the undershoot of issue 23: half the MACs deployed
])
def test_fidelity_compares_the_deployed_network_with_the_last_epochs_estimate(macs, ms, within):
    res = fidelity({"macs_ratio": 0.34, "latency_ms_0": 17.0}, _verify(macs, ms))
    assert res["within"] is within
    assert res["macs_ratio"]["gap"] == pytest.approx(macs / 0.34 - 1)
    assert res["predicted_p90_ms"] == {"training": 17.0, "deployed": ms,
                                       "gap": pytest.approx(ms / 17.0 - 1)}


def test_fidelity_without_a_latency_estimate_compares_the_macs_alone():
    res = fidelity({"macs_ratio": 0.5}, _verify(0.5, 10.0))
    assert list(res) == ["macs_ratio", "tolerance", "within"] and res["within"]
    assert fidelity({}, _verify(0.5, 10.0))["within"] is False  # nothing compared: not within
