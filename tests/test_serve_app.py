"""minillm.serve in-process (Starlette's TestClient): what depends on how the app is mounted and run.

The protocol itself is tested against real servers in tests/test_serve.py; here the app is called
in-process where that is the point: mounted under a prefix, with its engine stopped, with JSON numbers
Python's float cannot hold.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from minillm.checkpoint import load_model
from minillm.serve import ServeConfig, create_app
from serving import tiny_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_model(tiny_folder(tmp_path_factory.mktemp("app") / "chat", chat=True))


def test_the_api_key_is_required_under_a_mount_prefix_too(tiny):
    """Mounted at /llm, the routes are /llm/v1/...: the key check must not be skipped for them."""
    parent = FastAPI()
    parent.mount("/llm", create_app(*tiny, ServeConfig(model_name="tiny", api_key="secret")))
    client = TestClient(parent)
    assert client.get("/llm/v1/models").status_code == 401
    assert client.post("/llm/v1/completions", json={"model": "tiny", "prompt": "x"}).status_code == 401
    assert client.get("/llm/v1/models", headers={"Authorization": "Bearer secret"}).status_code == 200
    assert client.get("/llm/health").status_code in (200, 503)  # public: the page reads it before the key
    assert client.get("/llm/").status_code == 200


def test_health_is_503_once_the_engine_has_stopped(tiny):
    app = create_app(*tiny, ServeConfig(model_name="tiny"))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200
        app.state.server.engine.close()
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["status"] == "stopped"
        busy = client.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        assert busy.status_code == 503 and busy.json()["error"]["type"] == "server_error"


@pytest.mark.parametrize("field", ["temperature", "top_p"])
def test_a_json_integer_too_large_for_a_float_is_a_400(tiny, field):
    app = create_app(*tiny, ServeConfig(model_name="tiny"))
    with TestClient(app) as client:
        body = '{"model": "tiny", "prompt": "x", "%s": 1%s}' % (field, "0" * 400)
        response = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400 and response.json()["error"]["param"] == field
