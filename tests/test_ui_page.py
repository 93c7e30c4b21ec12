"""The web page's routes without a browser: served at `/` with its assets under `/ui/`,
open without the API key (it holds no data), locked down by its Content-Security-Policy,
and gone with `--no-ui`. The page itself is driven in Chromium in test_ui_browser.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from runner.api.app import create_app
from runner.api.ui.page import STATIC_DIR
from runner.cli import build_parser, settings_from
from runner.config import Settings
from runner.store import ModelStore

ASSETS = ["/ui/style.css"] + [f"/ui/js/{p.name}" for p in sorted((STATIC_DIR / "js").glob("*.js"))]


def client(models_dir: Path, **settings: object) -> TestClient:
    # No `with`: the lifespan (model preloads) is not needed to serve static files.
    config = Settings(models_dir=models_dir, **settings)
    app = create_app(config, store=ModelStore(models_dir, bundled_default=False))
    return TestClient(app, base_url="http://127.0.0.1:12434")


def test_page_and_assets_are_served(tmp_path: Path) -> None:
    http = client(tmp_path)
    page = http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<meta name="runner-auth" content="none">' in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "http" not in policy  # nothing outside this server, ever
    for path in ASSETS:
        asset = http.get(path)
        assert asset.status_code == 200, path
    script = http.get("/ui/js/main.js")
    assert "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "no-cache"  # no stale script after an upgrade
    etag = {"If-None-Match": script.headers["etag"]}
    assert http.get("/ui/js/main.js", headers=etag).status_code == 304
    assert http.get("/ui/../pyproject.toml").status_code == 404


def test_no_ui_turns_it_off(tmp_path: Path) -> None:
    http = client(tmp_path, ui=False)
    assert http.get("/").status_code == 404
    assert http.get("/ui/js/main.js").status_code == 404
    assert http.get("/health").status_code == 200


def test_page_is_open_but_the_api_needs_the_key(tmp_path: Path) -> None:
    http = client(tmp_path, api_key="sekret")
    page = http.get("/")
    assert page.status_code == 200
    assert '<meta name="runner-auth" content="required">' in page.text
    assert http.get("/ui/js/api.js").status_code == 200
    assert http.get("/engines/status").status_code == 401
    assert http.get("/v1/models").status_code == 401
    models = http.get("/v1/models", headers={"Authorization": "Bearer sekret"})
    assert models.status_code == 200


def test_page_requests_pass_the_origin_and_host_rules(tmp_path: Path) -> None:
    http = client(tmp_path)
    same_origin = {"Origin": "http://127.0.0.1:12434", "Host": "127.0.0.1:12434"}
    assert http.get("/v1/models", headers=same_origin).status_code == 200
    hostile = {"Origin": "http://evil.example", "Host": "127.0.0.1:12434"}
    assert http.get("/v1/models", headers=hostile).status_code == 403
    assert http.get("/", headers={"Host": "evil.example"}).status_code == 403


@pytest.mark.parametrize(("flag", "expected"), [("--no-ui", False), ("--ui", True)])
def test_ui_flag(flag: str, expected: bool, tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--models-dir", str(tmp_path), flag])
    assert settings_from(args).ui is expected


def test_ui_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_UI", "false")
    assert Settings(models_dir=tmp_path).ui is False
