"""The web page at `/`, driven in a real headless Chromium (Debian's `chromium`, through
Playwright's Python API) against a real server with the bundled model.

One flow, as a person would use it: pick the model, send the seed's first message and watch
the answer stream in; send a second message with the same system prompt and read the
reused-token figure, which must equal the `cache_n` of the response the browser received;
stop a long answer and watch the slot go idle in the status pane (the server cancelled it);
reload and find the conversations still there. Every step is screenshotted into the test's
tmp folder (`RUNNER_UI_SCREENSHOT=path` also saves the cache-figures step there, which is
how docs/ui.png is made). Throughout: no console errors and no request leaving 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, sync_playwright
from weather_tool import WEATHER_TOOL

from runner.store import BUNDLED_TAGS

MODEL = BUNDLED_TAGS[0]
SYSTEM = "You are a helpful coding assistant."
FIRST = "Write a Python function to add two numbers"
SECOND = "Now write one that multiplies two numbers"
THIRD = "And one that subtracts them"
LONG = ["Count from one to one thousand in words.", "List every prime below ten thousand."]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Offline and quiet: no updater, sync, QUIC or GPU; no sandbox (CI runs as root).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 180_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (apt-get install chromium); .ci/run installs it",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Watched:
    """A page plus what it did: console errors, uncaught exceptions, requests."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.origin = origin
        self.errors: list[str] = []
        self.requests: list[Request] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", lambda request: self.requests.append(request))

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        outside = [r.url for r in self.requests if not r.url.startswith(self.origin + "/")]
        assert outside == [], outside


@pytest.fixture
def watched(browser: Browser) -> Callable[[str], Watched]:
    contexts = []

    def open_page(url: str) -> Watched:
        context = browser.new_context(viewport={"width": 1280, "height": 820})
        contexts.append(context)
        watched = Watched(context.new_page(), url.rstrip("/"))
        watched.page.set_default_timeout(STEP_TIMEOUT_MS)
        watched.page.goto(url)
        return watched

    yield open_page
    for context in contexts:
        context.close()


def final_timings(sse_body: str) -> dict[str, Any]:
    """`timings` of the last chunk that carries them in an SSE body."""
    chunks = [
        json.loads(line[5:])
        for line in sse_body.splitlines()
        if line.startswith("data:") and line[5:].strip() != "[DONE]"
    ]
    return [c for c in chunks if "timings" in c][-1]["timings"]


def send(page: Page, text: str, capture: bool = False) -> str:
    """Type `text`, send it and wait for the answer to finish. With `capture`, the chat
    response goes through Playwright's router and its SSE body is returned (Chromium keeps
    no copy of a body the page read as a stream; routed, the page gets it in one piece)."""
    bodies: list[str] = []

    def relay(route: Route) -> None:
        response = route.fetch(timeout=STEP_TIMEOUT_MS)
        bodies.append(response.text())
        route.fulfill(response=response)

    if capture:
        page.route("**/chat/completions", relay)
    done_before = page.locator(".msg.assistant[data-state=done]").count()
    page.fill("#prompt", text)
    page.click("#send")
    page.locator(".msg.assistant[data-state=done]").nth(done_before).wait_for()
    if capture:
        page.unroute("**/chat/completions")
        assert len(bodies) == 1
        return bodies[0]
    return ""


def figure(page: Page, field: str, answer: int = -1) -> str:
    """A cache figure shown under the `answer`-th assistant message (default: the last)."""
    return page.locator(f".msg.assistant >> nth={answer} >> [data-field={field}]").inner_text()


def slot_states(page: Page) -> list[str]:
    return page.eval_on_selector_all("[data-slot-state]", "ns => ns.map(n => n.dataset.slotState)")


@pytest.fixture(scope="module")
def model_server(start_server: Callable[..., Any]) -> Any:
    return start_server("--model", MODEL, "--slots", "2", "--ctx-size", "2048")


def test_chat_cache_figures_stop_and_reload(
    model_server: Any, watched: Callable[[str], Watched], tmp_path: Path
) -> None:
    server = model_server
    view = watched(server.url + "/")
    page = view.page
    shot = lambda name: page.screenshot(path=tmp_path / f"{name}.png")  # noqa: E731

    # Pick the bundled model; the status pane lists it as loaded with its slots.
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.select_option("#model", MODEL)
    page.wait_for_selector("[data-slot-state]")
    page.fill("#system", SYSTEM)
    page.fill("#max-tokens", "48")
    page.fill("#temperature", "0")
    shot("01-model-picked")

    # First message: the answer streams in (the page shows partial text before the end).
    page.evaluate(
        """() => {
            window.partials = new Set();
            new MutationObserver(() => {
                const last = [...document.querySelectorAll('.msg.assistant')].pop();
                if (last && last.dataset.state === 'streaming') {
                    window.partials.add(last.querySelector('.content').textContent.length);
                }
            }).observe(document.getElementById('messages'), {childList: true, subtree: true});
        }"""
    )
    send(page, FIRST)
    final_text = page.locator(".msg.assistant .content").last.inner_text()
    partials = [n for n in page.evaluate("[...window.partials]") if n > 0]
    assert len(partials) >= 2, f"no partial answers seen while streaming: {partials}"
    assert final_text.strip()
    assert int(figure(page, "prompt_n")) > 0
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", figure(page, "ttft")), figure(page, "ttft")
    # The status pane's prompt-cache tiers, from /metrics: entries, bytes of capacity, hits,
    # and the model's lookups and misses.
    page.locator("#status-cache tr[data-tier=disk]").wait_for()
    for tier in ("ram", "disk"):
        cells = page.locator(f"#status-cache tr[data-tier={tier}] td").all_inner_texts()
        assert cells[0] == tier and cells[1].isdigit() and cells[3].isdigit(), cells
        assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB) / [\d.]+ (B|KiB|MiB|GiB)", cells[2]), cells
    tiers = page.locator("#status-cache").inner_text()
    assert re.search(r"lookups \d+, misses \d+", tiers), tiers
    shot("02-first-answer")

    # Second message, same system prompt: the page's reused figure is the response's cache_n.
    timings = final_timings(send(page, SECOND, capture=True))
    assert timings["cache_n"] > 0, timings
    assert figure(page, "cache_n") == str(timings["cache_n"])
    assert figure(page, "prompt_n") == str(timings["prompt_n"])
    assert figure(page, "cache_source") == timings["cache_source"]
    speed = float(figure(page, "tokens_per_second").removesuffix(" tok/s"))
    assert abs(speed - timings["predicted_per_second"]) <= 0.051, (speed, timings)
    shot("03-cache-figures")
    if target := os.environ.get("RUNNER_UI_SCREENSHOT"):
        # The routed answer above arrived in one piece (its TTFT is the whole answer's
        # time); one more, streamed, for a picture with the usual figures.
        send(page, THIRD)
        page.wait_for_selector("[data-slot-state=busy]", state="detached")
        page.screenshot(path=target)
    conversation = page.locator("#messages").inner_text()

    # A long answer, stopped: the status pane shows a busy slot, then every slot idle.
    page.fill("#max-tokens", "1500")
    for prompt in LONG:  # a base model may end an answer early; then try another prompt
        page.click("#new-chat")
        page.fill("#prompt", prompt)
        page.click("#send")
        page.wait_for_selector("[data-slot-state=busy]")
        page.wait_for_function(
            "() => document.querySelector('.msg.assistant:last-child .content').textContent"
        )
        if page.locator("#stop").is_visible():
            shot("04-streaming")
            page.click("#stop")
            break
    page.wait_for_selector(".msg.assistant:last-child[data-state=done] .note:text('stopped')")
    page.wait_for_function(
        """() => {
            const states = [...document.querySelectorAll('[data-slot-state]')];
            return states.length === 2 && states.every(n => n.dataset.slotState === 'idle');
        }""",
        timeout=30_000,
    )
    shot("05-stopped")
    metrics = httpx.get(server.url + "/metrics", timeout=30).text
    cancelled = [line for line in metrics.splitlines() if 'reason="cancelled"' in line]
    assert cancelled and float(cancelled[0].split()[-1]) >= 1, cancelled

    # The seed's other half: a new system prompt shares next to nothing, so it is computed.
    page.click("#new-chat")
    page.fill("#system", "You are a pirate who answers in rhymes.")
    page.fill("#max-tokens", "8")
    send(page, FIRST)
    assert int(figure(page, "cache_n")) < int(figure(page, "prompt_n"))
    shot("06-new-system-prompt")

    # Reload: the conversations are still listed, the first one with all its messages.
    page.reload()
    page.wait_for_selector("#conversations li >> nth=1")
    titles = page.locator("#conversations li span").all_inner_texts()
    assert len(titles) >= 2 and titles[-1] == FIRST, titles
    page.locator("#conversations li").last.click()
    page.wait_for_selector(".msg.assistant >> nth=1")
    assert page.locator("#messages").inner_text() == conversation
    assert figure(page, "cache_n", answer=1) == str(timings["cache_n"])
    shot("07-reloaded")
    view.assert_clean()


def test_tool_call_is_shown(
    model_server: Any, watched: Callable[[str], Watched], tmp_path: Path
) -> None:
    # A base model calls tools only when forced: tool_choice "required".
    view = watched(model_server.url + "/")
    page = view.page
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.click("#tools-box summary")
    page.fill("#tools", "[not json")
    page.fill("#prompt", "What is the weather in Paris?")
    page.click("#send")
    page.wait_for_selector("#tools-error:text('not valid JSON')")
    assert page.locator(".msg").count() == 0  # nothing was sent
    page.fill("#tools", json.dumps([WEATHER_TOOL]))
    page.select_option("#tool-choice", "required")
    page.fill("#max-tokens", "60")
    send(page, "What is the weather in Paris?")
    call = page.locator(".msg.assistant .tool-calls pre").first.inner_text()
    name, _, arguments = call.partition("(")
    assert name == "get_weather"
    assert isinstance(json.loads(arguments.removesuffix(")"))["city"], str)
    page.screenshot(path=tmp_path / "tool-call.png")
    view.assert_clean()


def test_server_error_is_shown_and_the_page_keeps_working(
    model_server: Any, watched: Callable[[str], Watched]
) -> None:
    view = watched(model_server.url + "/")
    page = view.page
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.fill("#max-tokens", "100000")  # more than a slot holds: a 400
    send(page, "Hello")
    error = page.locator(".msg.assistant.error-msg .note.error").inner_text()
    assert "max_tokens" in error, error
    page.fill("#max-tokens", "8")
    send(page, "Hello again")
    assert int(figure(page, "predicted_n").split()[0]) > 0
    # The browser reports the refused request itself; nothing else may go wrong.
    assert len(view.errors) == 1 and "status of 400" in view.errors[0], view.errors
    view.errors.clear()
    view.assert_clean()


def test_unload_and_preload_buttons(
    model_server: Any, watched: Callable[[str], Watched], tmp_path: Path
) -> None:
    view = watched(model_server.url + "/")
    page = view.page
    card = page.locator(f"#status-models .card[data-model='{MODEL}']")
    card.locator(".idle:text('unloads in')").wait_for()
    card.locator("button[data-action=unload]").click()
    preload = page.locator("#status-models button[data-action=preload]").first
    preload.wait_for()
    assert httpx.get(model_server.url + "/engines/ps", timeout=30).json() == []
    assert page.locator("[data-slot-state]").count() == 0
    page.screenshot(path=tmp_path / "unloaded.png")
    preload.click()
    card.wait_for()
    page.wait_for_selector("[data-slot-state=idle]")
    rows = httpx.get(model_server.url + "/engines/ps", timeout=30).json()
    assert [row["model_name"] for row in rows] == [MODEL]
    page.screenshot(path=tmp_path / "preloaded.png")
    view.assert_clean()


def test_api_key_is_asked_for_and_sent(
    start_server: Callable[..., Any], watched: Callable[[str], Watched], tmp_path: Path
) -> None:
    server = start_server("--api-key", "sekret-key", "--slots", "1", "--ctx-size", "512")
    view = watched(server.url + "/")
    page = view.page
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", "sekret-key")
    page.click("#key-form button[type=submit]")
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    page.wait_for_selector("#status-engine:text('llama')")
    page.screenshot(path=tmp_path / "api-key.png")
    api = [r for r in view.requests if "/engines/" in r.url or r.url.endswith("/models")]
    assert api and all(r.headers.get("authorization") == "Bearer sekret-key" for r in api)
    assert page.evaluate("sessionStorage.getItem('runner.apiKey')") == "sekret-key"
    assert page.evaluate("localStorage.getItem('runner.apiKey')") is None
    view.assert_clean()


MARKDOWN_CASES = {
    "<script>window.hacked = 1</script>": "&lt;script&gt;",
    "<img src=x onerror=window.hacked=1>": "&lt;img src=x onerror=window.hacked=1&gt;",
    "[click](javascript:window.hacked=1)": "[click](javascript:window.hacked=1)",
    '[x](https://a.example/" onmouseover="window.hacked=1)': "&quot; onmouseover=&quot;",
    "```html\n<b>bold</b>\n```": '<code class="language-html">&lt;b&gt;bold&lt;/b&gt;</code>',
    "**bold** and `<i>code</i>`": "<strong>bold</strong> and <code>&lt;i&gt;code&lt;/i&gt;</code>",
    "- one\n- two": "<ul><li>one</li><li>two</li></ul>",
    "```python\ndef add(a, b):\n    return a + b": '<code class="language-python">def add',
}


def test_markdown_renderer_escapes_html(
    start_server: Callable[..., Any], watched: Callable[[str], Watched]
) -> None:
    server = start_server("--slots", "1", "--ctx-size", "512")
    view = watched(server.url + "/")
    page = view.page
    page.wait_for_selector(f"#model option[value='{MODEL}']", state="attached")
    rendered = page.evaluate(
        """async (cases) => {
            const { renderMarkdown } = await import('/ui/js/markdown.js');
            const out = {};
            for (const source of cases) {
                out[source] = renderMarkdown(source);
                const box = document.createElement('div');
                box.innerHTML = out[source];  // would run an onerror handler if one got out
                document.body.append(box);
            }
            return out;
        }""",
        list(MARKDOWN_CASES),
    )
    for source, expected in MARKDOWN_CASES.items():
        assert expected in rendered[source], (source, rendered[source])
        assert "<script" not in rendered[source] and "<img" not in rendered[source]
        assert 'href="javascript' not in rendered[source]
    page.wait_for_timeout(200)
    assert page.evaluate("window.hacked") is None

    # A stored answer with reasoning and a tool call shows both apart from the content.
    stored = {
        "id": "stored",
        "title": "stored",
        "model": MODEL,
        "system": "",
        "updated": 1,
        "messages": [
            {"role": "user", "content": "<b>hi</b>"},
            {
                "role": "assistant",
                "content": "",
                "reasoning": "The user <greets>.",
                "tool_calls": [{"function": {"name": "wave", "arguments": '{"hand": "left"}'}}],
                "stats": {"cache_n": 5, "prompt_n": 7, "cache_source": "ram"},
            },
        ],
    }
    page.evaluate("c => localStorage.setItem('runner.conversations', JSON.stringify([c]))", stored)
    page.reload()
    page.wait_for_selector(".msg.assistant")
    assert page.locator(".msg.user .content").inner_html() == "&lt;b&gt;hi&lt;/b&gt;"
    reasoning = page.locator(".msg.assistant details.reasoning pre").text_content()
    assert reasoning == "The user <greets>."
    assert page.locator(".tool-calls pre").inner_text() == 'wave({"hand": "left"})'
    assert figure(page, "cache_source") == "ram" and figure(page, "cache_n") == "5"
    view.assert_clean()
