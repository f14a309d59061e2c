"""The run report in a real browser: headless Chromium decodes every picture, logs no error, and lays
the page out inside the window at a laptop's width and a phone's. The screenshots stay in the test's
folder (the laptop one also at $MNISTGAN_REPORT_SCREENSHOT, when set) for a person to look at."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import mnistgan
from mnistgan.report import write_report

from conftest import TINY_MLP

CHROMIUM = shutil.which("chromium")  # Debian's package; CI installs it (.ci/run)
# CSS pixels; the phone lays the page out as phones do, by the page's viewport tag.
WINDOWS = {"laptop": (1280, 900, False), "phone": (390, 844, True)}
TIMEOUT = 30  # seconds for any one answer from the browser: ample on a loaded 2-core machine


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``):
    NUL-terminated JSON, commands into the browser's fd 3, answers and events out of its fd 4. Unlike
    the websocket it needs no port, no client library and no handshake."""

    def __init__(self, executable: str, folder: Path):
        self.stderr = folder / "chromium.log"
        commands_read, self.commands = os.pipe()
        self.answers, answers_write = os.pipe()
        # The browser's ends, moved to fd 10 or above: then putting them at 3 and 4 overwrites neither.
        child_ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_read, answers_write)]
        for fd in (commands_read, answers_write):
            os.close(fd)

        def wire_pipes():  # in the child, before exec; dup2 clears close-on-exec
            os.dup2(child_ends[0], 3)
            os.dup2(child_ends[1], 4)

        with open(self.stderr, "wb") as log:
            self.process = subprocess.Popen(
                [executable, "--headless", "--remote-debugging-pipe", f"--user-data-dir={folder / 'profile'}",
                 "--no-sandbox",  # containers and root forbid Chromium's sandbox; the page is our own file
                 "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
                 "--no-default-browser-check", "--mute-audio", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, close_fds=False,
                preexec_fn=wire_pipes, start_new_session=True)  # its own group: one kill ends every helper
        for fd in child_ends:
            os.close(fd)
        self.messages: list[dict] = []  # every answer and event so far, in order
        self.pending = b""
        self.last_id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        sent = len(self.messages)
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        answer = self.wait(lambda message, id=self.last_id: message.get("id") == id, sent)
        if "error" in answer:
            raise RuntimeError(f"Chromium refused {method}: {answer['error'].get('message')}")
        return answer["result"]

    def wait(self, wanted, since: int) -> dict:
        """The first message from ``since`` on that ``wanted`` accepts, reading more as they come."""
        deadline = time.monotonic() + TIMEOUT
        seen = since
        while True:
            for message in self.messages[seen:]:
                if wanted(message):
                    return message
            seen = len(self.messages)
            if not select.select([self.answers], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError(f"Chromium did not answer within {TIMEOUT} s; its log: {self.log_tail()}")
            chunk = os.read(self.answers, 1 << 20)
            if not chunk:
                raise ConnectionError(f"Chromium exited; its log: {self.log_tail()}")
            *complete, self.pending = (self.pending + chunk).split(b"\0")
            self.messages += [json.loads(raw) for raw in complete]

    def log_tail(self) -> str:
        return self.stderr.read_text(errors="replace")[-2000:]

    def close(self) -> None:
        for fd in (self.commands, self.answers):
            os.close(fd)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=TIMEOUT)


# The page's own account of itself, once it has loaded and every picture has decoded (or failed to).
INSPECT = """(async () => {
  if (document.readyState !== "complete") await new Promise(loaded => addEventListener("load", loaded));
  const images = await Promise.all(Array.from(document.images, image => image.decode().catch(() => null)
    .then(() => ({alt: image.alt, width: image.naturalWidth}))));
  const boxes = Array.from(document.body.querySelectorAll("*"));
  return {url: location.href, images, window_width: innerWidth,
          page_width: document.documentElement.scrollWidth, page_height: document.documentElement.scrollHeight,
          scrolls_sideways: boxes.filter(box => box.clientWidth > 0 && box.scrollWidth > box.clientWidth + 1)
                                 .map(box => box.tagName)};
})()"""


def render(browser: Chromium, html_file: Path, width: int, height: int, mobile: bool = False) -> dict:
    """Open ``html_file`` in a fresh tab of a ``width`` x ``height`` window: what INSPECT finds, the errors
    the page logged or threw, and a PNG of the whole page."""
    target = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Page", "Runtime", "Log"):  # before the page opens, so that no message is missed
        browser.call(f"{domain}.enable", session)
    browser.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1, mobile=mobile)
    start = len(browser.messages)
    browser.call("Page.navigate", session, url=html_file.as_uri())
    browser.wait(lambda message: message.get("method") == "Page.loadEventFired" and message.get("sessionId") == session, start)
    found = browser.call("Runtime.evaluate", session, expression=INSPECT, awaitPromise=True, returnByValue=True)
    if "exceptionDetails" in found or found["result"]["value"]["url"] != html_file.as_uri():
        raise RuntimeError(f"could not inspect {html_file}: {found}")
    result = found["result"]["value"]
    shot = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": width, "height": result["page_height"], "scale": 1})
    result["screenshot"] = base64.b64decode(shot["data"])
    result["errors"] = [text for message in browser.messages[start:]
                        if message.get("sessionId") == session and (text := _error_text(message))]
    browser.call("Target.closeTarget", targetId=target)
    return result


def _error_text(message: dict) -> str | None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Runtime.exceptionThrown":
        return params["exceptionDetails"].get("exception", {}).get("description") or params["exceptionDetails"]["text"]
    if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
        return " ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"])
    if method == "Log.entryAdded" and params["entry"]["level"] == "error":
        return params["entry"]["text"]
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("chromium is not installed, and CI installs it (.ci/run): the report cannot be checked in a browser",
                        pytrace=False)
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); CI runs this check")
    browser = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium"))
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def report(browser, tmp_path_factory) -> Path:
    """A real run's report with every section filled: grid, GIF, curves, quality table and config."""
    run = tmp_path_factory.mktemp("browser") / "run"
    mnistgan.train("vanilla-gan", out=run, overrides={**TINY_MLP, "train.sample_every": 1})
    mnistgan.load(run).evaluate(n=100, device="cpu")  # the fewest samples it takes: the table is what matters here
    return write_report(run)


@pytest.mark.parametrize("window", WINDOWS)
def test_the_report_renders_cleanly(browser, report, window, tmp_path):
    width, height, mobile = WINDOWS[window]
    page = render(browser, report, width, height, mobile)
    (tmp_path / f"report-{window}.png").write_bytes(page["screenshot"])
    if window == "laptop" and os.environ.get("MNISTGAN_REPORT_SCREENSHOT"):
        Path(os.environ["MNISTGAN_REPORT_SCREENSHOT"]).write_bytes(page["screenshot"])
    assert [image["alt"] for image in page["images"]] == [
        "fixed noise after epoch 1", "the grids over training", "losses and D's outputs"]
    assert all(image["width"] > 0 for image in page["images"]), page["images"]  # each one decoded
    assert page["errors"] == []
    assert page["window_width"] == width, "the page is laid out at the window's width"
    assert page["page_width"] <= width and page["scrolls_sideways"] == [], "nothing is wider than the window"
    assert page["screenshot"].startswith(b"\x89PNG") and len(page["screenshot"]) > 10_000


def test_the_checks_see_a_broken_picture_and_an_error(browser, tmp_path):
    """The checks above can fail: a picture that does not decode and a script that throws are seen."""
    broken = tmp_path / "broken.html"
    broken.write_text('<img alt="broken" src="data:image/png;base64,iVBORw0KGgo="><script>throw new Error("boom")</script>')
    page = render(browser, broken, 640, 480)
    assert page["images"] == [{"alt": "broken", "width": 0}]
    assert any("boom" in error for error in page["errors"]), page["errors"]
