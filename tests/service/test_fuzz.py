"""Fuzzing: schemathesis drives every route of the app's own OpenAPI document with generated requests,
and hypothesis throws malformed bytes and arrays at the decoders. No 5xx, every answer as documented."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.app import create_app
from service.codecs import decode_base64_image, decode_image, decode_instance
from service.errors import ServiceError
from service.manifest import load_manifest
from service.settings import Settings
from tests.conftest import SHIPPED_REPOSITORY, bundle_dir

SPEC = load_manifest(bundle_dir()).input
MAX_PIXELS = 4096 * 4096


@pytest.fixture(scope="module")
def served_app() -> Iterator:
    app = create_app(Settings(model_repository=SHIPPED_REPOSITORY, max_instances=8))
    with TestClient(app):  # runs the lifespan: bundles loaded and warmed up
        yield app


def test_every_route_answers_as_documented(served_app) -> None:
    """Each operation of /openapi.json, 30 generated requests each: no 5xx, and status codes, content
    types and bodies as the document declares.

    Positive-data acceptance is left out: an instance that fits the JSON schema (any string) is still
    refused with a documented 422 unless it decodes as an image, which no schema can express.
    """
    # NOTE: schemathesis' pytest plugin does not load under this pytest; its hypothesis strategies do.
    schema = schemathesis.openapi.from_asgi("/openapi.json", served_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1/predict",
        "/v1/models/{name}/predict",
        "/v1/models/{name}/versions/{version}/predict",
        "/healthz",
        "/metrics",
    }
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_random_bytes_never_escape_as_anything_but_a_client_error(payload: bytes) -> None:
    try:
        decoded = decode_image(payload, SPEC, max_pixels=MAX_PIXELS)
    except ServiceError as error:
        assert 400 <= error.status_code < 500
    else:
        assert decoded.shape == SPEC.shape and decoded.dtype == np.float32


@given(st.text(max_size=512))
@settings(max_examples=300, deadline=None)
def test_random_base64_text(text: str) -> None:
    with pytest.raises(ServiceError):
        decode_base64_image(text, SPEC, max_pixels=MAX_PIXELS)


_scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)


@given(st.recursive(_scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=60))
@settings(max_examples=300, deadline=None)
def test_random_json_instances(instance) -> None:
    try:
        decoded = decode_instance(instance, SPEC, max_pixels=MAX_PIXELS, index=0)
    except ServiceError as error:
        assert 400 <= error.status_code < 500
    else:
        assert decoded.shape == SPEC.shape and np.isfinite(decoded).all()
