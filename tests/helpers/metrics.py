"""The Prometheus endpoint from the outside: scrape ``/metrics`` and read samples."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.helpers.harness import GatewayHarness
from tests.helpers.http_client import http_request


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly ``labels``; 0 when a labelled counter has none."""
        for sample in self.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
        family = name.removesuffix("_total")
        assert family in self.families, f"no metric {name}: {sorted(self.families)}"
        if labels and self.families[family].type in ("counter", "gauge"):
            return 0.0  # a label value that never occurred has no sample yet
        raise AssertionError(f"no sample {name}{labels} in:\n{self.text}")

    def count(self, histogram: str) -> float:
        return self.value(f"{histogram}_count")


async def scrape(harness: GatewayHarness) -> Scrape:
    result = await http_request("GET", f"http://{harness.base}/metrics")
    assert result.status == 200, result
    assert result.content_type == "text/plain", result.headers
    assert "version=0.0.4" in result.headers["content-type"], result.headers
    return Scrape(result.raw.decode())
