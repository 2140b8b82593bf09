"""The OpenAPI document matches the real endpoints."""

import re

from openapi_spec_validator import validate

from gateway.app import create_app


async def test_the_document_is_valid_openapi_3_1(api):
    response, document = await api.request("GET", "/api/v1/openapi.json")
    assert response.status == 200
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_every_route_is_documented_and_nothing_else(api, services):
    _, document = await api.request("GET", "/api/v1/openapi.json")
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    app = create_app(services)
    served = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        is_api = path is not None and re.match(r"^/(api/|healthz|metrics)", path)
        if route.method == "HEAD" or not is_api:
            continue  # static pages are not part of the API
        served.add((route.method, path))
    assert served, "no API routes found"
    assert served == documented


async def test_documented_access_matches_enforcement(api):
    """Every operation that declares a bearer requirement refuses an anonymous call."""
    _, document = await api.request("GET", "/api/v1/openapi.json")
    for path, ops in document["paths"].items():
        concrete = re.sub(r"{[a-z_]+}", "00000000-0000-4000-8000-000000000000", path)
        for method, op in ops.items():
            anonymous_allowed = op["security"] == [] or {} in op["security"]
            response, body = await api.request(method.upper(), concrete)
            if anonymous_allowed:
                assert response.status != 401, (method, path)
            else:
                assert response.status == 401, (method, path, body)
                assert "401" in op["responses"]
