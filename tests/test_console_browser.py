"""The operators' console in a real browser: Debian's Chromium driven by selenium through
chromedriver, against the real web app served by uvicorn inside a real host (test kit FakeLLM and
FakeAdapter, a real SQLite database, real chromadb with the bundled embedding model).

Screenshots of every page go to ``$BOTS_SCREENSHOTS`` (default: the test's tmp folder); the path
is printed.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from bots.testing import FakeAdapter
from bots.testing.servers import require_program
from bots.web import web_service

pytestmark = pytest.mark.slow  # a browser, a web server, the embedding model: ~30 s

WAIT_S = 60  # generous: a 2-core CI machine loading the embedding model while Chromium starts
STALE_RETRIES = 5  # reads that met a page replaced by a form's post or a reload
DRAFT_TEXT = "Tonight the light turns for the last time this season."
NOTE = "The foghorn at Shiyu sounds twice every thirty seconds when visibility drops below a mile.\n"
PERSONA_YAML = "name: Tester\nsystem_prompt: You are Tester, a patient test persona.\n"


class Browser:
    """A headless Chromium; every blocking WebDriver call runs in a thread, so the host and the
    web server (on this event loop) keep serving while the browser waits for them."""

    def __init__(self, base: str, shots: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = require_program("chromium", "/usr/bin/chromium")
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
            options.add_argument(flag)
        service = Service(executable_path=require_program("chromedriver", "/usr/bin/chromedriver"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.base = base
        self.shots = shots

    async def call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, path: str) -> None:
        await self.call(self.driver.get, path if path.startswith("http") else self.base + path)

    async def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return await self.call(self.driver.find_element, By.CSS_SELECTOR, css)

    async def text(self, css: str = "main") -> str:
        """The element's text; read again when the page was replaced meanwhile."""
        from selenium.common.exceptions import StaleElementReferenceException

        for _ in range(STALE_RETRIES):
            element = await self.find(css)
            try:
                return await self.call(getattr, element, "text")
            except StaleElementReferenceException:
                continue
        pytest.fail(f"{css} was replaced by the page {STALE_RETRIES} times while being read")

    async def click(self, css: str) -> None:
        element = await self.find(css)
        await self.call(element.click)

    async def type(self, css: str, text: str) -> None:
        element = await self.find(css)
        await self.call(element.clear)
        await self.call(element.send_keys, text)

    async def until(self, what: str, condition: Any) -> None:
        """Wait (in the browser's thread) until ``condition(driver)`` is true; fail naming ``what``."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        # a click's form post (or a page's reload) may replace the page while the wait looks at it:
        # an element found in one round may be gone in the next, which only means "look again"
        wait = WebDriverWait(self.driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,))
        try:
            await self.call(wait.until, condition)
        except TimeoutException:
            main = await self.text("body")
            pytest.fail(f"waited {WAIT_S}s for {what}; the page says: {main[:500]}")

    async def shot(self, name: str) -> None:
        await self.call(self.driver.save_screenshot, str(self.shots / f"{name}.png"))

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("BOTS_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


async def served_host(harness, tmp_path: Path):
    knowledge = tmp_path / "knowledge"
    (knowledge / "notes").mkdir(parents=True)
    (knowledge / "notes" / "keeper.md").write_text("# Keeper\n\nThe lamp is lit at dusk.\n", encoding="utf-8")
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "test.yaml").write_text(PERSONA_YAML, encoding="utf-8")
    adapter = FakeAdapter()
    h = await harness(
        start=False,
        adapter=adapter,
        plugins=["basics", "admin"],
        roles={"owners": ["fake:boss"], "operators": ["fake:op"]},
        knowledge_dir=knowledge,
        personas_dir=personas,
        knowledge={"embedding_model": "minilm"},
        web={"port": 0},
        bot={
            "knowledge": ["notes"],
            "schedules": [
                {
                    "id": "evening",
                    "job": "bots.testing.jobs:post_text",
                    "cron": "0 21 * * *",
                    "target": "fake:harbour",
                    "review": True,
                    "options": {"text": DRAFT_TEXT},
                }
            ],
        },
    )
    server = web_service(h.host, h.config)
    await h.host.start()
    return h, server


def session_cookie(browser: Browser) -> dict[str, str]:
    cookie = browser.driver.get_cookie("bots_console")
    assert cookie is not None, "the browser holds no console session cookie after logging in"
    return cookie


async def test_console_in_a_real_browser(harness, tmp_path, screenshots, capsys):
    require_program("chromium", "/usr/bin/chromium")  # skip (fail in CI) before starting anything
    require_program("chromedriver", "/usr/bin/chromedriver")
    h, server = await served_host(harness, tmp_path)
    console = server.app.state.console
    scheduling = h.host.control.scheduling
    assert await scheduling.run_now("testbot:evening") == "review"  # a draft waits for an operator
    browser = await asyncio.to_thread(Browser, server.url, screenshots)
    try:
        # -- log in with a one-time link ---------------------------------------------------------
        link = f"{server.url}/console/login?token={await console.links.create('fake:op')}"
        await browser.open(link)
        await browser.shot("login")
        await browser.click("#login button")
        await browser.until("the status page after login", lambda d: "/console/" in d.current_url
                            and d.find_elements("id", "channels"))  # fmt: skip
        assert "fake:op (operator)" in await browser.text("#operator")
        assert re.search(r"testbot fake fake up", await browser.text("#channels"))
        cookie = session_cookie(browser)
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        await browser.shot("status")
        await browser.open(link)  # the link works once
        await browser.click("#login button")
        await browser.until("the refusal of a used link", lambda d: d.find_elements("id", "problem"))
        assert "unknown, used or expired" in await browser.text("#problem")

        # -- approve the draft: it is posted once ------------------------------------------------
        await browser.open("/console/review")
        assert DRAFT_TEXT in await browser.text("#draft-1")
        await browser.shot("review")
        await browser.click("#draft-1 button.approve")
        await browser.until("the approval's note", lambda d: d.find_elements("id", "flash"))
        assert await browser.text("#flash") == "Draft #1: posted."
        await scheduling.tick()  # the scheduler's next round finds nothing left to post
        assert [o.text for o in h.adapter.sent if o.target.id == "harbour"] == [DRAFT_TEXT]
        assert "No drafts waiting." in await browser.text()

        # -- jobs, audit log ---------------------------------------------------------------------
        await browser.open("/console/jobs")
        assert "testbot:evening" in await browser.text("#jobs")
        await browser.click("#jobs button")  # "Run now": another draft
        await browser.until("the run's note", lambda d: d.find_elements("id", "flash"))
        assert await browser.text("#flash") == "testbot:evening: review"
        await browser.shot("jobs")
        await browser.open("/console/audit?command=review")
        audit = await browser.text("#audit")
        assert "testbot fake:op web review approve #1 version 1 ok" in audit
        await browser.shot("audit")

        # -- upload a file; it is indexed (progress) and found by search -------------------------
        await browser.open("/console/knowledge")
        note = tmp_path / "foghorn.md"
        note.write_text(NOTE, encoding="utf-8")
        upload = await browser.find("#upload input[type=file]")
        await browser.call(upload.send_keys, str(note))
        await browser.click("#upload button")
        await browser.until(
            "the ingest task to finish",
            lambda d: d.find_elements("css selector", ".task[data-state=done], .task[data-state=failed]"),
        )
        # the collection had never been indexed: the file that was there and the upload
        assert (await browser.text(".task-message")).startswith("notes: 2 added"), await browser.text(".task")
        await browser.shot("knowledge")
        await browser.type("#search input[name=q]", "foghorn visibility")
        await browser.click("#search button")
        await browser.until("search hits", lambda d: d.find_elements("id", "hits"))
        assert (await browser.text("#hits")).startswith("foghorn.md")
        await browser.shot("knowledge-search")
        upload_task = await browser.call((await browser.find(".task")).get_attribute, "data-task")
        await browser.click("#collections button")  # re-ingest: nothing changed since
        await browser.until(  # a task of its own (the upload's finished one is on the page before)
            "the re-ingest to finish",
            lambda d: (
                (boxes := d.find_elements("css selector", ".task"))
                and boxes[0].get_attribute("data-task") != upload_task
                and boxes[0].get_attribute("data-state") in ("done", "failed")
            ),
        )
        assert "2 unchanged" in await browser.text(".task-message"), await browser.text(".task")

        # -- personas: try a message, run a tiny eval --------------------------------------------
        h.llm.queue("Hello from the tester.")
        await browser.open("/console/personas")
        await browser.type("#try input[name=text]", "Hello there")
        await browser.click("#try button")
        await browser.until("the persona's reply", lambda d: d.find_elements("id", "reply"))
        assert "Hello from the tester." in await browser.text("#reply")
        questions = '{"q": "What do you do?"}\n{"q": "你好吗？"}'
        await browser.type("#eval textarea", questions)
        await browser.click("#eval button")
        await browser.until("the eval's tables", lambda d: d.find_elements("css selector", "table.eval"))
        totals = await browser.text("table.eval:nth-of-type(2)")
        assert totals.startswith("Totals") and "all 2" in totals
        await browser.shot("personas")

        # -- roles: an operator's attempt at an owner's action is refused ------------------------
        await browser.open("/console/roles")
        await browser.shot("roles")
        await browser.type("#grant input[name=user]", "fake:newbie")
        await browser.click("#grant button")
        await browser.until("the refusal", lambda d: d.find_elements("id", "problem"))
        assert "fake:op has the role operator: this needs owner rights." in await browser.text("#problem")
        assert h.host.permissions.role_of("fake:newbie").name == "MEMBER"

        # -- a POST without the CSRF token is refused, with a valid session ----------------------
        cookies = {"bots_console": session_cookie(browser)["value"]}
        async with httpx.AsyncClient(base_url=server.url, cookies=cookies) as client:
            forged = await client.post("/console/review/2/approve", data={"version": "1"})
            assert forged.status_code == 403
            assert (await client.get("/console/review")).status_code == 200  # the session itself is fine
        assert (await scheduling.review.get(2)).state == "pending"

        # -- a member sees nothing ---------------------------------------------------------------
        await browser.call(browser.driver.delete_all_cookies)
        await browser.open(f"{server.url}/console/login?token={await console.links.create('fake:visitor')}")
        await browser.click("#login button")
        await browser.until("the member's refusal", lambda d: d.find_elements("id", "problem"))
        refusal = await browser.text("#problem")
        assert refusal == "fake:visitor has the role member: this needs operator rights."
        assert not await browser.call(browser.driver.find_elements, "css selector", "nav")
        await browser.shot("member-refused")
    finally:
        await asyncio.to_thread(browser.quit)
    entries, _ = await h.host.audit.search(actor="fake:visitor")
    assert {"refused: member", "refused"} <= {e.result for e in entries}  # the login, the page
    with capsys.disabled():
        print(f"\nconsole screenshots: {screenshots}")
    assert {p.stem for p in screenshots.glob("*.png")} >= {
        "status", "review", "jobs", "audit", "knowledge", "personas", "roles", "member-refused"
    }  # fmt: skip
