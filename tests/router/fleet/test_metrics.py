from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from router.fleet.metrics import label_samples, merge_expositions

ONE = b"""# HELP zeroserve_requests_total Requests.
# TYPE zeroserve_requests_total counter
zeroserve_requests_total{endpoint="a"} 3.0
# HELP zeroserve_up Up.
# TYPE zeroserve_up gauge
zeroserve_up 1.0
"""
TWO = b"""# HELP zeroserve_requests_total Requests.
# TYPE zeroserve_requests_total counter
zeroserve_requests_total{endpoint="a"} 4.0
zeroserve_requests_total{endpoint="b"} 1.0
"""


def test_every_sample_names_its_gateway_and_families_stay_whole() -> None:
    merged = merge_expositions([("gw-1", ONE), ("gw-2", TWO)]).decode()
    assert merged.count("# TYPE zeroserve_requests_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    samples = {(s.labels["gateway"], s.labels.get("endpoint")): s.value
               for s in families["zeroserve_requests"].samples}
    assert samples == {("gw-1", "a"): 3.0, ("gw-2", "a"): 4.0, ("gw-2", "b"): 1.0}
    assert [s.labels for s in families["zeroserve_up"].samples] == [{"gateway": "gw-1"}]


def test_label_quoting() -> None:
    assert label_samples('m{a="1"} 2', 'x"y') == 'm{gateway="x\\"y",a="1"} 2'
    assert label_samples("m 2", "g") == 'm{gateway="g"} 2'
