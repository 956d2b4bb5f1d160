"""The demo catalog makes Discover convincing out of the box: typical tasks find the right agent."""

from __future__ import annotations

import pytest
from capreg_client import CapregClient

from registry.app import demo_catalog_path
from registry.manifest import load_agents

EXPECTED_TOP_CAPABILITY = {
    "translate this German supply contract into English": "translate-legal-document",
    "review this pull request for SQL injection bugs": "review-pull-request",
    "transcribe this podcast episode": "transcribe-audio",
    "what is the ICD-10 code for type 2 diabetes": "assign-icd10-codes",
    "write a SQL query for monthly revenue by region": "generate-sql",
    "extract line items from this invoice PDF": "extract-invoice-data",
    "caption this photo": "caption-image",
    "summarize this clinical note": "summarize-clinical-note",
    "why is my kubernetes pod in CrashLoopBackOff": "troubleshoot-kubernetes",
    "is this credit card transaction fraudulent": "score-transaction-fraud",
    "convert this text to speech": "text-to-speech",
    "what's the weather forecast for Berlin tomorrow": "forecast-weather",
}


def test_catalog_is_large_and_varied() -> None:
    agents = load_agents(demo_catalog_path())
    assert len(agents) >= 40
    assert len({a.name for a in agents}) == len(agents)
    assert {a.kind for a in agents} == {1, 2, 3}
    assert sum(len(a.capabilities) for a in agents) >= 60


@pytest.mark.parametrize(("task", "capability"), EXPECTED_TOP_CAPABILITY.items())
def test_typical_tasks_find_the_right_capability(demo_client: CapregClient, task: str, capability: str) -> None:
    top = demo_client.discover(task, top_k=1).matches[0]
    assert top.capability.name == capability
