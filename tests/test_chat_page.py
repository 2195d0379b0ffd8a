"""The chat page at GET / (minillm/static/chat.html), driven in a real headless browser (appendix C).

A tiny random model is served by `python -m minillm serve` (tests/serving.py) and Debian's chromium,
through selenium, types into the page like a reader would: the answer must stream in piece by piece
and end equal to what the API answers directly at temperature 0; a base model gets plain
continuation; an API key is asked for, and works once filled in. The browser's console must stay
free of errors. A screenshot of the chat lands in /tmp/chat_page.png.

Needs chromium and its driver: `apt-get install -y chromium chromium-driver` (the test fails without them).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from browser import chromium
from serving import live_server, tiny_folder

SCREENSHOT = Path("/tmp/chat_page.png")
MAX_TOKENS = 20
TIMEOUT = 30  # seconds to wait for the page

# Records every text the streamed answers showed (each `textContent +=` adds a new text node), so the test
# sees the answer grow however the browser batched the network reads.
RECORD_STREAM = """
window.__shown = [];
new MutationObserver((records) => {
  for (const r of records) for (const node of r.addedNodes) {
    if (node.nodeType === Node.TEXT_NODE && r.target.classList.contains("reply")) window.__shown.push(node.data);
  }
}).observe(document.getElementById("messages"), {childList: true, subtree: true});
"""


# A stand-in for fetch that streams one SSE line cut in two mid-JSON, then never ends until aborted:
# the Stop button (and the parsing of lines split across reads) without racing a fast model.
ENDLESS_FETCH = """
const real = window.fetch;
window.fetch = (url, init) => {
  if (!String(url).includes("/completions")) return real(url, init);
  const bytes = new TextEncoder().encode('data: {"choices": [{"index": 0, "delta": {"content": "partial"}}]}\\n\\n');
  const body = new ReadableStream({start(controller) {
    controller.enqueue(bytes.slice(0, 30));
    setTimeout(() => controller.enqueue(bytes.slice(30)), 50);
    init.signal.addEventListener("abort", () => controller.error(new DOMException("stopped", "AbortError")));
  }});
  return Promise.resolve(new Response(body, {headers: {"Content-Type": "text/event-stream"}}));
};
"""


@pytest.fixture(scope="module")
def driver():
    with chromium("the chat page test", "960,720") as browser:
        yield browser


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_page")
    return {"chat": tiny_folder(root / "chat", chat=True), "base": tiny_folder(root / "base", chat=False)}


def wait(driver, condition, what: str, timeout: float = TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(), message=f"the page did not show {what}")


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def open_page(driver, url: str) -> None:
    driver.get_log("browser")  # drop what an earlier test left
    driver.get(url + "/")
    wait(driver, lambda: js(driver, "return document.getElementById('mode').textContent") in ("chat", "completion"),
         "its mode")  # fmt: skip
    js(driver, RECORD_STREAM)


def settings(driver, max_tokens: int = MAX_TOKENS, temperature: float = 0) -> None:
    for name, value in (("max-tokens", max_tokens), ("temperature", temperature)):
        field = driver.find_element("id", name)
        field.clear()
        field.send_keys(str(value))


def replies(driver) -> list[str]:
    return js(driver, "return [...document.querySelectorAll('.msg.assistant .reply')].map(e => e.textContent)")


def send_and_wait(driver, text: str, enter: bool = False) -> list[str]:
    """Type `text`, send it (the button, or Enter) and wait until the answer stops streaming: the replies."""
    before = len(replies(driver))
    prompt = driver.find_element("id", "prompt")
    prompt.send_keys(text)
    if enter:
        from selenium.webdriver.common.keys import Keys

        prompt.send_keys(Keys.ENTER)
    else:
        driver.find_element("id", "send").click()
    wait(driver, lambda: js(driver, "return !document.getElementById('send').disabled && "
                                    "!document.querySelector('.streaming')")
         and (len(replies(driver)) > before or error_text(driver)), "the end of the answer")  # fmt: skip
    return replies(driver)


def error_text(driver) -> str:
    return js(driver, "return document.getElementById('error').textContent")


def header(driver) -> str:
    return driver.find_element("tag name", "header").text


def mode(driver) -> str:
    return driver.find_element("id", "mode").text


def console_errors(driver, allowed: tuple[str, ...] = ()) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]  # fmt: skip


def api(url: str, path: str, body: dict, key: str | None = None) -> str:
    """The text the API answers directly (not streamed) to `body`, with the page's settings."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {**body, "max_tokens": MAX_TOKENS, "temperature": 0}
    response = httpx.post(url + path, json=body, headers=headers, timeout=60)
    response.raise_for_status()
    choice = response.json()["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def streamed_pieces(url: str, path: str, body: dict) -> int:
    """How many non-empty pieces of text the API streams for `body` (the page can show at most that many)."""
    body = {**body, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    count = 0
    with httpx.stream("POST", url + path, json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                count += bool(choice["delta"].get("content") if "delta" in choice else choice["text"])
    return count


def assert_streamed(driver, final: str, pieces: int) -> None:
    """The page showed the answer growing: distinct non-empty prefixes of `final`, ending with it."""
    shown = [s for s in js(driver, "const s = window.__shown; window.__shown = []; return s") if s]
    assert shown and shown[-1] == final, shown
    assert all(final.startswith(s) for s in shown), shown
    assert len(set(shown)) >= min(2, pieces), f"the answer did not grow piece by piece: {shown}"


def test_chat_model_streams_answers_with_history(driver, folders):
    with live_server(folders["chat"], name="tiny-chat") as url:
        open_page(driver, url)
        wait(driver, lambda: "tiny-chat" in header(driver), "the model's name")
        assert mode(driver) == "chat" and not error_text(driver)
        settings(driver)

        first = {"role": "user", "content": "def generate("}
        [answer] = send_and_wait(driver, first["content"])
        assert not error_text(driver)
        assert answer == api(url, "/v1/chat/completions", {"model": "tiny-chat", "messages": [first]})
        assert_streamed(driver, answer, streamed_pieces(url, "/v1/chat/completions",
                                                        {"model": "tiny-chat", "messages": [first]}))  # fmt: skip

        # Shift+Enter is a new line, Enter sends; the second answer continues the conversation
        from selenium.webdriver.common.keys import Keys

        driver.find_element("id", "prompt").send_keys("and", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "then")
        assert js(driver, "return document.getElementById('prompt').value") == "and\nthen"
        assert len(replies(driver)) == 1
        driver.find_element("id", "prompt").clear()
        second = {"role": "user", "content": "the batch"}
        answers = send_and_wait(driver, second["content"], enter=True)
        assert len(answers) == 2 and answers[0] == answer
        history = [first, {"role": "assistant", "content": answer}, second]
        assert answers[1] == api(url, "/v1/chat/completions", {"model": "tiny-chat", "messages": history})
        users = js(driver, "return [...document.querySelectorAll('.msg.user')].map(e => e.textContent)")
        assert users == [first["content"], second["content"]]

        driver.save_screenshot(str(SCREENSHOT))

        # Stop: an answer that never ends is cut where it is, and the page is ready for the next message
        js(driver, ENDLESS_FETCH)
        driver.find_element("id", "prompt").send_keys("go on")
        driver.find_element("id", "send").click()
        wait(driver, lambda: replies(driver)[-1] == "partial", "the first piece of the endless answer")
        assert driver.find_element("id", "send").get_attribute("disabled")
        driver.find_element("id", "stop").click()
        wait(driver, lambda: js(driver, "return !!document.querySelector('.msg.assistant.stopped')"), "the stop")
        assert not driver.find_element("id", "send").get_attribute("disabled")
        assert driver.find_element("id", "stop").get_attribute("disabled")
        assert replies(driver)[-1] == "partial" and not error_text(driver)
        assert console_errors(driver) == []


def test_base_model_gets_plain_completion(driver, folders):
    with live_server(folders["base"], name="tiny-base") as url:
        open_page(driver, url)
        wait(driver, lambda: "tiny-base" in header(driver), "the model's name")
        assert mode(driver) == "completion" and "base model" in header(driver)
        assert not error_text(driver)
        settings(driver)
        prompt = "def generate("
        [continuation] = send_and_wait(driver, prompt)
        assert not error_text(driver)
        assert continuation == api(url, "/v1/completions", {"model": "tiny-base", "prompt": prompt})
        assert_streamed(driver, continuation, streamed_pieces(url, "/v1/completions",
                                                              {"model": "tiny-base", "prompt": prompt}))  # fmt: skip
        shown = js(driver, "return document.querySelector('.msg.assistant').textContent")
        assert shown == prompt + continuation  # the prompt, then what the model wrote
        assert console_errors(driver) == []


def test_api_key_is_asked_for_then_used(driver, folders):
    with live_server(folders["chat"], "--api-key", "secret", name="tiny-key") as url:
        open_page(driver, url)
        wait(driver, lambda: "API key" in error_text(driver), "that an API key is needed")
        settings(driver)

        send_and_wait(driver, "def generate(")  # without the key: an error, and the message is kept to retry
        assert "API key" in error_text(driver)
        assert replies(driver) == []
        assert js(driver, "return document.getElementById('prompt').value") == "def generate("

        driver.find_element("id", "api-key").send_keys("secret")
        driver.find_element("id", "send").click()
        wait(driver, lambda: replies(driver) and not js(driver, "return !!document.querySelector('.streaming')"),
             "an answer once the key is given")  # fmt: skip
        assert not error_text(driver)
        messages = [{"role": "user", "content": "def generate("}]
        assert replies(driver) == [api(url, "/v1/chat/completions", {"model": "tiny-key", "messages": messages},
                                       key="secret")]  # fmt: skip
        wait(driver, lambda: "tiny-key" in header(driver), "the model's name")
        assert js(driver, "return sessionStorage.getItem('minillm-api-key')") == "secret"
        assert js(driver, "return localStorage.length") == 0
        # the refused requests are logged by the browser as failed loads (401); nothing else may be
        assert console_errors(driver, allowed=("401",)) == []


def test_a_long_conversation_drops_its_oldest_turns_to_fit_the_context(driver, folders):
    """The tiny model's context is 96 tokens: by the third long turn the history no longer fits. The page
    leaves out the oldest turns (and says so in the answer's tooltip) instead of failing every send."""
    with live_server(folders["chat"], name="tiny-chat") as url:
        open_page(driver, url)
        settings(driver, max_tokens=8)
        long = "the batch decodes every row " * 3
        for turn in range(4):
            shown = send_and_wait(driver, f"{long} {turn}")
            assert error_text(driver) == "", error_text(driver)
            assert len(shown) == turn + 1
        titles = js(driver, "return [...document.querySelectorAll('.msg.assistant')].map(e => e.title)")
        assert titles[0] == "" and any("left out" in t for t in titles[1:]), titles
        assert console_errors(driver, allowed=("400",)) == []
