"""The web page's status pane lists the prefixes clients pinned, with their TTL countdown,
and drops one on request (real headless Chromium against a real server, as in
test_ui_browser)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from test_ui_browser import MODEL, Watched, browser, model_server, pytestmark, watched  # noqa: F401


def test_pins_are_listed_with_their_countdown_and_dropped(
    model_server: Any,  # noqa: F811
    watched: Callable[[str], Watched],  # noqa: F811
    tmp_path: Path,
) -> None:
    system = [
        {
            "type": "text",
            "text": "You are a careful assistant. " + "Keep every answer short. " * 30,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    body = {"model": MODEL, "max_tokens": 1, "system": system, "messages": [
        {"role": "user", "content": "Hi"}
    ]}  # fmt: skip
    r = httpx.post(model_server.url + "/v1/messages", json=body, timeout=300)
    assert r.status_code == 200 and r.json()["usage"]["cache_creation_input_tokens"] > 100
    (pin,) = [p for m in httpx.get(model_server.url + "/engines/cache").json()["models"]
              for p in m["pins"]]  # fmt: skip

    view = watched(model_server.url + "/")
    page = view.page
    row = page.locator(f"#status-cache tr[data-pin-id='{pin['id']}']")
    row.wait_for()
    assert row.locator(".ttl-left").inner_text().startswith(("59m", "1h"))
    page.screenshot(path=tmp_path / "pins.png")
    row.locator("button[data-action=drop-pin]").click()
    row.wait_for(state="detached")
    models = httpx.get(model_server.url + "/engines/cache").json()["models"]
    assert all(not m["pins"] for m in models)
    view.assert_clean()
