"""Property test: random and mutated bytes posted to ``POST /v1/inspect`` of a real server on loopback.

Every answer is JSON: 200 with a verdict, or 4xx with an ``error`` message; never 5xx, never a
dropped connection, and the server still answers ``/healthz`` afterwards (issue 8, bad input).
"""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from strategies import image_payloads
from test_serve import call, running


@pytest.fixture(scope="module")
def server(small_bundle):
    with running(small_bundle) as srv:
        yield srv


@settings(max_examples=120, deadline=20_000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=image_payloads())
def test_any_bytes_get_a_json_verdict_or_a_json_4xx(server, payload):
    status, _, body = call(server, "POST", "/v1/inspect", payload, {"Content-Type": "application/octet-stream"})
    answer = json.loads(body)
    if status == 200:
        assert isinstance(answer["score"], float) and isinstance(answer["anomalous"], bool)
    else:
        assert 400 <= status < 500, (status, answer)
        assert answer.get("error"), answer


def test_server_is_still_healthy_after_the_fuzzing(server):
    status, _, body = call(server, "GET", "/healthz")
    assert status == 200 and json.loads(body)
