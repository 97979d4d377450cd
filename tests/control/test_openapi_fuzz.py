"""schemathesis against the served ``/openapi.json``: no 500s, every answer as documented,
with an admin token and without one; and every write refuses the anonymous (401) and
the under-privileged (observer: 403), found from the schema so new endpoints are covered."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from .conftest import Api

#: examples per operation and token: the whole module stays under a minute on 2 cores
EXAMPLES = 25
#: the reads that need no token
OPEN = {("GET", "/api/v1/health"), ("GET", "/openapi.json")}


def _fuzz(api: Api, headers: dict[str, str], examples: int, anonymous: bool) -> list[str]:
    """Every operation of the served schema, ``examples`` generated requests each, checked
    by schemathesis's checks (no 5xx, status, content type and body as documented)."""
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    tried = []
    for result in schema.get_all_operations():
        operation = result.ok()
        tried.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            # a schema-valid request may still be refused with 422 for what a schema cannot
            # say (a bundle that is not a zip, a run_config key the app does not have)
            response = case.call_and_validate(
                headers=headers, timeout=30, excluded_checks=[positive_data_acceptance]
            )
            where = (case.method, case.operation.path)
            if anonymous and where not in OPEN:
                assert response.status_code == 401, (where, response.text)
                assert response.json()["error"]["code"] == "unauthenticated"

        check()
    return tried


def test_an_admin_never_meets_a_500_and_every_answer_is_documented(api: Api) -> None:
    admin = {"Authorization": f"Bearer {api.token['admin']}"}
    tried = _fuzz(api, admin, EXAMPLES, anonymous=False)
    assert "POST /api/v1/runs" in tried and "GET /api/v1/runs/{run_id}/model" in tried


def test_no_token_is_refused_with_a_documented_401(api: Api) -> None:
    _fuzz(api, {}, EXAMPLES // 5, anonymous=True)


def _writes(api: Api) -> list[tuple[str, str]]:
    """Every operation of the served schema but the reads (and the model download)."""
    paths = api.call("GET", "/openapi.json").json()["paths"]
    found = [(m.upper(), p) for p, ops in paths.items() for m in ops if m != "get"]
    return [*found, ("GET", "/api/v1/runs/{run_id}/model")]


def test_every_write_refuses_the_anonymous_and_an_observer(api: Api) -> None:
    writes = _writes(api)
    assert {("POST", "/api/v1/runs"), ("POST", "/api/v1/apps")} <= set(writes)
    for method, path in writes:
        concrete = path.replace("{run_id}", "0123456789ab")
        body = {"app": "heart-disease"} if method == "POST" else None
        for token, status, code in ((None, 401, "unauthenticated"),
                                    (api.token["observer"], 403, "forbidden")):  # fmt: skip
            answer = api.call(method, concrete, token=token, body=body)
            assert answer.status == status, (method, path, answer.body)
            assert answer.json()["error"]["code"] == code
