"""The console's security and actions through the real web app (httpx against the ASGI app of a
real host with the test kit's FakeAdapter/FakeLLM and a real SQLite database). The browser test
(tests/test_console_browser.py) drives the same pages in Chromium."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bots.cli import app as cli
from bots.core.permissions import Role
from bots.knowledge.collection import Collection
from bots.knowledge.uploads import UploadError, accept_upload
from bots.web import WebContext, create_app
from bots.web.console.status import Rates
from bots.web.console.tasks import Tasks

PAGES = ["/", "/review", "/jobs", "/audit", "/knowledge", "/personas", "/roles"]
POSTS = [
    ("/review/1/approve", {"version": "1"}),
    ("/review/1/edit", {"text": "changed"}),
    ("/review/1/regenerate", {}),
    ("/review/1/reject", {}),
    ("/jobs/run", {"job": "testbot:evening"}),
    ("/jobs/pause", {"job": "testbot:evening"}),
    ("/jobs/resume", {"job": "testbot:evening"}),
    ("/roles/grant", {"user": "fake:x", "role": "operator"}),
    ("/roles/revoke", {"user": "fake:op"}),
    ("/knowledge/ingest", {"collection": "notes"}),
    ("/knowledge/upload", {"collection": "notes"}),
    ("/personas/try", {"text": "hi"}),
    ("/personas/eval", {"questions": '{"q": "hi"}'}),
    ("/logout", {}),
]
EVENING = {
    "id": "evening",
    "job": "bots.testing.jobs:ask_the_model",
    "cron": "0 21 * * *",
    "target": "fake:harbour",
    "review": True,
    "options": {"prompt": "Write tonight's note."},
}


class Console:
    """The app of a running host, and a way to log in as anyone."""

    def __init__(self, h, app) -> None:
        self.h = h
        self.app = app
        self.links = app.state.console.links

    def client(self, https: bool = False) -> httpx.AsyncClient:
        base = "https://console.test" if https else "http://console.test"
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=base)

    async def open_link(self, client: httpx.AsyncClient, token: str) -> httpx.Response:
        """Open a login link and press its button, as a person does."""
        page = await client.get("/console/login", params={"token": token})
        assert page.status_code == 200 and 'id="login"' in page.text
        fields = dict(re.findall(r'name="(token|csrf)" value="([^"]*)"', page.text))
        return await client.post("/console/login", data=fields)

    async def login(self, client: httpx.AsyncClient, who: str) -> str:
        """Log ``client`` in as ``who``; returns the session's CSRF token ("" for a member)."""
        response = await self.open_link(client, await self.links.create(who))
        assert response.status_code == 303, response.text
        page = await client.get("/console/roles")
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        return found.group(1) if found else ""


@pytest.fixture
async def console(harness, tmp_path: Path) -> Console:
    knowledge = tmp_path / "knowledge"
    (knowledge / "notes").mkdir(parents=True)
    h = await harness(
        plugins=["basics", "admin"],
        roles={"owners": ["fake:boss"], "operators": ["fake:op"], "banned": ["fake:troll"]},
        knowledge_dir=knowledge,
        web={"upload_max_mb": 1},
        bot={"knowledge": ["notes"], "schedules": [EVENING]},
    )
    return Console(h, create_app(WebContext(h.host, h.config)))


async def draft(c: Console, *answers: str) -> int:
    c.h.llm.queue(*answers)
    assert await c.h.host.control.scheduling.run_now("testbot:evening") == "review"
    return (await c.h.host.control.scheduling.review.pending())[-1].id


async def test_a_login_link_works_once_and_sets_a_strict_httponly_cookie(console):
    token = await console.links.create("fake:op")
    async with console.client(https=True) as client:
        for _preview in range(2):  # a chat app fetching the link for a preview spends nothing
            page = await client.get("/console/login", params={"token": token})
            assert page.status_code == 200 and "Log in to the console" in page.text
            assert "default-src 'self'" in page.headers["content-security-policy"]
        forged = await client.post("/console/login", data={"token": token})  # no CSRF token: refused
        assert forged.status_code == 403
        first = await console.open_link(client, token)
        assert first.status_code == 303 and first.headers["location"] == "/console/"
        cookie = next(c for c in first.headers.get_list("set-cookie") if c.startswith("bots_console="))
        for flag in ("HttpOnly", "SameSite=strict", "Secure", "Path=/console"):
            assert flag in cookie
        again = await console.open_link(client, token)
        assert again.status_code == 401 and "unknown, used or expired" in again.text
        assert "fake:op (operator)" in (await client.get("/console/")).text  # the session of the first use
    async with console.client() as client:
        plain = await console.open_link(client, await console.links.create("fake:op"))
        assert "Secure" not in plain.headers["set-cookie"]  # http: a Secure cookie would be dropped
        expired = await console.links.create("fake:op", ttl=timedelta(seconds=-1))
        assert (await console.open_link(client, expired)).status_code == 401
        assert (await console.open_link(client, "made-up")).status_code == 401
    entries, _ = await console.h.host.audit.search(command="console login")
    assert sorted(e.result for e in entries) == [
        "ok",
        "ok",
        "refused: no CSRF token",
        "refused: unknown, used or expired link",
        "refused: unknown, used or expired link",
        "refused: unknown, used or expired link",
    ]


async def test_only_the_hash_of_a_link_is_stored(console):
    from bots.core.storage import KeyValueStore

    token = await console.links.create("fake:op")
    keys = await KeyValueStore(console.h.host.db, "console/login").keys()
    assert keys and token not in keys and all(len(k) == 64 for k in keys)


async def test_every_page_and_action_needs_a_session(console):
    async with console.client() as client:
        for page in PAGES:
            response = await client.get("/console" + page)
            assert response.status_code == 401, page
            assert "bots console-link" in response.text
        for path, data in POSTS:
            assert (await client.post("/console" + path, data=data)).status_code == 401, path


def test_the_checks_below_cover_every_post_route(console):
    from bots.web.console import content, login, operations

    modules = (login, operations, content)  # what bots.web.console.mount includes
    routes = [r for m in modules for r in m.routes(console.app.state.console).routes if "POST" in r.methods]
    assert len(routes) > 5
    for route in routes:
        if route.path != "/login":  # before a session: its own CSRF cookie (tested above)
            assert any(route.path_regex.match(path) for path, _ in POSTS), route.path


async def test_every_post_without_the_csrf_token_is_refused_and_changes_nothing(console):
    number = await draft(console, "Tonight's note.")
    async with console.client() as client:
        csrf = await console.login(client, "fake:boss")
        for path, data in POSTS:
            missing = await client.post("/console" + path.replace("/1/", f"/{number}/"), data=data)
            assert missing.status_code == 403, path
            wrong = await client.post("/console" + path, data={**data, "csrf": csrf[:-2] + "xx"})
            assert wrong.status_code == 403, path
        assert (await client.get("/console/")).status_code == 200  # still logged in: logout was refused
    assert (await console.h.host.control.scheduling.review.get(number)).versions == ["Tonight's note."]
    assert (await console.h.host.control.scheduling.review.get(number)).state == "pending"
    assert console.h.host.permissions.role_of("fake:x") == Role.MEMBER
    assert console.h.adapter.sent == []
    entries, _ = await console.h.host.audit.search(result="no CSRF token")
    assert len(entries) == 2 * len(POSTS)


async def test_members_and_banned_people_see_nothing(console):
    for who in ("fake:visitor", "fake:troll"):
        async with console.client() as client:
            await console.login(client, who)
            for page in PAGES:
                response = await client.get("/console" + page)
                assert response.status_code == 403, (who, page)
                assert "<nav>" not in response.text and "Draft" not in response.text
    _entries, total = await console.h.host.audit.search(actor="fake:visitor", result="refused")
    assert total == len(PAGES) + 2  # the login itself ("refused: member"), the roles page, each page


async def test_an_operator_revoked_meanwhile_is_refused_at_the_next_click(console):
    async with console.client() as client:
        await console.login(client, "fake:helper")  # a member now ...
        assert (await client.get("/console/")).status_code == 403
        await console.h.host.control.set_role("fake:helper", Role.OPERATOR, by="fake:boss")
        assert (await client.get("/console/")).status_code == 200  # ... an operator after a grant
        await console.h.host.control.set_role("fake:helper", Role.MEMBER, by="fake:boss")
        assert (await client.get("/console/")).status_code == 403


async def test_roles_change_only_by_owners_as_in_chat(console):
    async with console.client() as client:
        csrf = await console.login(client, "fake:op")
        refused = await client.post(
            "/console/roles/grant", data={"user": "fake:x", "role": "operator", "csrf": csrf}
        )
        assert refused.status_code == 403 and "needs owner rights" in refused.text
    assert console.h.host.permissions.role_of("fake:x") == Role.MEMBER
    async with console.client() as client:
        csrf = await console.login(client, "fake:boss")
        done = await client.post(
            "/console/roles/grant", data={"user": "fake:x", "role": "operator", "csrf": csrf}
        )
        assert done.status_code == 303
        assert "fake:x: operator" in (await client.get("/console/roles")).text
        bad = await client.post(
            "/console/roles/grant", data={"user": "fake:x", "role": "owner", "csrf": csrf}
        )
        assert bad.status_code == 303
        assert "A role is operator or member." in (await client.get("/console/roles")).text
    assert console.h.host.permissions.role_of("fake:x") == Role.OPERATOR
    entries, _ = await console.h.host.audit.search(command="roles grant")
    assert [(e.actor, e.args, e.result) for e in reversed(entries)] == [
        ("fake:op", "", "refused"),
        ("fake:boss", "fake:x operator", "ok"),
    ]


async def test_review_edit_regenerate_approve_posts_the_chosen_version_once(console):
    number = await draft(console, "First try.", "Second try.")
    async with console.client() as client:
        csrf = await console.login(client, "fake:op")
        url = f"/console/review/{number}"
        await client.post(f"{url}/regenerate", data={"csrf": csrf})
        await client.post(f"{url}/edit", data={"csrf": csrf, "text": "The operator's own words."})
        page = (await client.get("/console/review")).text
        assert "Version 3 (chosen)" in page and "Second try." in page
        assert (await client.post(f"{url}/approve", data={"csrf": csrf, "version": "2"})).status_code == 303
        assert "posted." in (await client.get("/console/review")).text
        await client.post(f"{url}/approve", data={"csrf": csrf, "version": "2"})  # twice: a double click
        assert f"draft #{number} is posted" in (await client.get("/console/review")).text
    await console.h.host.control.scheduling.tick()
    assert [o.text for o in console.h.adapter.sent] == ["Second try."]
    entries, _ = await console.h.host.audit.search(actor="fake:op", command="review")
    assert [(e.command, e.result) for e in reversed(entries)] == [
        ("review regenerate", "ok"),
        ("review edit", "ok"),
        ("review approve", "ok"),
        ("review approve", f"error: draft #{number} is posted"),
    ]


async def test_a_rejected_draft_is_never_posted(console):
    number = await draft(console, "Not this one.")
    async with console.client() as client:
        csrf = await console.login(client, "fake:op")
        await client.post(f"/console/review/{number}/reject", data={"csrf": csrf})
    scheduling = console.h.host.control.scheduling
    assert (await scheduling.review.get(number)).state == "rejected"
    await scheduling.tick()
    assert console.h.adapter.sent == []


async def test_jobs_pause_resume_and_run_now(console):
    scheduling = console.h.host.control.scheduling
    async with console.client() as client:
        csrf = await console.login(client, "fake:op")
        await client.post("/console/jobs/pause", data={"csrf": csrf, "job": "testbot:evening"})
        assert "paused" in (await client.get("/console/jobs")).text
        assert scheduling.jobs()[0].next_run is None
        await client.post("/console/jobs/resume", data={"csrf": csrf, "job": "testbot:evening"})
        assert scheduling.jobs()[0].next_run is not None
        console.h.llm.queue("A note.")
        await client.post("/console/jobs/run", data={"csrf": csrf, "job": "testbot:evening"})
        assert "testbot:evening: review" in (await client.get("/console/jobs")).text
        await client.post("/console/jobs/run", data={"csrf": csrf, "job": "testbot:nope"})
        assert "No job &#39;testbot:nope&#39;." in (await client.get("/console/jobs")).text
    assert [d.versions for d in await scheduling.review.pending()] == [["A note."]]


async def test_the_audit_log_filters_and_pages(console):
    audit = console.h.host.audit
    for n in range(60):
        await audit.record(
            bot="testbot", actor=f"fake:{n % 2}", channel="fake", command="mute", args="", result="ok"
        )
    async with console.client() as client:
        await console.login(client, "fake:op")
        first = (await client.get("/console/audit", params={"actor": "fake:1"})).text
        assert "30 entries; page 1 of 1" in first
        second = (await client.get("/console/audit", params={"page": 2})).text
        assert "page 2 of 2" in second and "newer" in second
        assert "<td>fake:0</td>" in second
        far = await client.get("/console/audit", params={"page": 10**20})  # past SQLite's integers
        assert far.status_code == 200 and f"page {10**6} of 2" in far.text


async def test_uploads_are_checked_before_they_land(console, tmp_path):
    folder = tmp_path / "knowledge" / "notes"
    async with console.client() as client:
        csrf = await console.login(client, "fake:op")

        async def upload(name: str, data: bytes, collection: str = "notes") -> str:
            form = {"csrf": csrf, "collection": collection}
            response = await client.post("/console/knowledge/upload", data=form, files={"file": (name, data)})
            assert response.status_code == 303
            return (await client.get("/console/knowledge")).text

        assert "is not a type we read" in await upload("tool.exe", b"MZ...")
        assert "not a zip container" in await upload("letter.docx", b"not a zip at all")
        assert "the file is empty" in await upload("blank.md", b"  \n")
        big = b"word " * (console.app.state.console.upload_limit // 5 + 1)
        assert "MiB limit" in await upload("huge.txt", big)
        assert "does not use a collection" in await upload("x.md", b"# x", "secrets")
        form = {"csrf": csrf, "collection": "notes"}
        huge = await client.post("/console/knowledge/upload", data=form, files={"file": ("x.txt", big * 2)})
        assert huge.status_code == 413 and "over the 1 MiB upload limit" in huge.text  # refused unread
    assert sorted(p.name for p in folder.iterdir()) == []  # nothing landed, no staging file left
    entries, _ = await console.h.host.audit.search(command="kb upload")
    assert len(entries) == 5 and all(e.result.startswith("refused: ") for e in entries)


def test_accept_upload_keeps_files_inside_the_collection(tmp_path):
    (tmp_path / "notes").mkdir()
    notes = Collection(tmp_path, "notes")
    stored = accept_upload(notes, "../../etc/passwd.md", b"# Passwd\nharmless\n")
    assert stored == tmp_path / "notes" / "passwd.md" and stored in notes.files()
    assert accept_upload(notes, "C:\\Users\\me\\笔记.txt", "灯还亮着。".encode()).name == "笔记.txt"
    with pytest.raises(UploadError, match="not a usable file name"):
        accept_upload(notes, "../..", b"x")
    with pytest.raises(UploadError, match="MiB limit"):
        accept_upload(notes, "a.txt", b"x" * 2048, max_bytes=1024)
    (tmp_path / "notes" / "collection.toml").write_text('include = ["*.md"]\n')
    with pytest.raises(UploadError, match="include/exclude leave this file out"):
        accept_upload(Collection(tmp_path, "notes"), "b.txt", b"text")
    # a file the collection leaves out is the operator's own: an upload of its name never replaces it
    with pytest.raises(UploadError, match="include/exclude leave this file out"):
        accept_upload(Collection(tmp_path, "notes"), "笔记.txt", b"an upload of the same name")
    assert (tmp_path / "notes" / "笔记.txt").read_text(encoding="utf-8") == "灯还亮着。"
    (tmp_path / "notes" / "sub.md").mkdir()
    with pytest.raises(UploadError, match="a folder of that name"):
        accept_upload(Collection(tmp_path, "notes"), "sub.md", b"# sub")
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == [
        "collection.toml",
        "passwd.md",
        "sub.md",
        "笔记.txt",
    ]


async def test_logging_in_again_ends_the_session_it_replaces(console):
    async with console.client() as client:
        await console.login(client, "fake:visitor")
        first = client.cookies["bots_console"]
        await console.login(client, "fake:op")
        assert client.cookies["bots_console"] != first
        assert (await client.get("/console/")).status_code == 200
    async with console.client() as replayed:
        replayed.cookies.set("bots_console", first)
        assert (await replayed.get("/console/")).status_code == 401


async def test_logout_ends_the_session(console):
    async with console.client() as client:
        csrf = await console.login(client, "fake:op")
        assert (await client.post("/console/logout", data={"csrf": csrf})).status_code == 303
        assert (await client.get("/console/")).status_code == 401


def test_console_link_prints_a_working_link_for_operators_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bots.toml").write_text(
        'data_dir = "var"\n[roles]\nowners = ["fake:boss"]\n[web]\nport = 8711\n', encoding="utf-8"
    )
    runner = CliRunner()
    made = runner.invoke(cli, ["console-link", "-c", "bots.toml"])
    assert made.exit_code == 0, made.output
    link = made.stdout.strip().splitlines()[0]
    assert re.fullmatch(r"http://127\.0\.0\.1:8711/console/login\?token=[\w-]{43}", link)
    token = link.rpartition("=")[2]
    assert asyncio.run(_consume(tmp_path / "var", token)) == "fake:boss"  # what the app does with it
    refused = runner.invoke(cli, ["console-link", "-c", "bots.toml", "--as", "fake:someone"])
    assert refused.exit_code == 1 and "fake:someone is a member" in refused.output


async def _consume(data_dir: Path, token: str) -> str | None:
    from bots.core.storage import Database
    from bots.web.console.auth import LoginLinks

    db = Database.in_data_dir(data_dir)
    await db.start()
    try:
        return await LoginLinks(db).consume(token)
    finally:
        await db.close()


async def test_the_status_page_shows_the_numbers_metrics_exports(console):
    console.h.llm.queue("Hello back.")
    await console.h.ask("hello", user="someone")  # a DM: one message in, one model call, one reply
    async with console.client() as client:
        await console.login(client, "fake:op")
        page = (await client.get("/console/")).text
        exported = (await client.get("/metrics")).text
    assert re.search(r'bots_messages_received_total\{bot="testbot",platform="fake"\} 1\.0', exported)
    for name in ("messages received", "messages sent", "model calls"):
        assert re.search(rf"<th>{name}</th><td>1</td><td>[\d.]+</td>", page), name
    assert re.search(r"<th>model call errors</th><td>0</td>", page)
    assert re.search(r"<td>testbot</td><td>fake</td><td>fake</td>\s*<td class=\"up\">up</td>", page)
    console.h.adapter.connected = False  # a channel that reports its connection (OneBot) lost it
    async with console.client() as client:
        await console.login(client, "fake:op")
        page = (await client.get("/console/")).text
    assert re.search(r"<td>testbot</td><td>fake</td><td>fake</td>\s*<td class=\"down\">down</td>", page)


def test_rates_are_over_the_last_hour_once_a_reading_is_that_old():
    rates = Rates(started=0.0)
    early, label = rates.per_hour({"m": 10.0}, now=1800.0)  # half an hour after start
    assert early == {"m": 20.0} and label == "average over the 30 min since start"
    rates.per_hour({"m": 30.0}, now=3000.0)
    later, label = rates.per_hour({"m": 100.0}, now=1800.0 + 3600.0)
    assert label == "last hour" and later == {"m": 90.0}  # 100 now, 10 an hour ago
    rates.per_hour({"m": 130.0}, now=3000.0 + 3600.0 + 60.0)
    assert [t for t, _ in rates.readings] == [3000.0, 5400.0, 6660.0]  # older readings dropped


async def test_two_uses_of_one_link_at_once_log_in_only_one(console):
    token = await console.links.create("fake:op")
    results = await asyncio.gather(*(console.links.consume(token) for _ in range(4)))
    assert results.count("fake:op") == 1 and results.count(None) == 3


async def test_background_tasks_report_progress_and_end_with_the_host():
    tasks, ended = Tasks(), []
    release = asyncio.Event()

    async def work(task) -> str:
        task.total, task.done = 2, 1
        await release.wait()
        return "all done"

    one_ended = asyncio.Event()

    async def record(task) -> None:
        ended.append(task.state)
        one_ended.set()

    finishing = tasks.start("ingest", "testbot/notes", "fake:op", work, on_end=record)
    stuck = tasks.start("eval", "testbot/test", "fake:op", lambda task: asyncio.Event().wait(), on_end=record)
    await asyncio.sleep(0)
    assert finishing.as_json() | {"id": 0} == {
        "id": 0, "kind": "ingest", "title": "testbot/notes", "state": "running",
        "total": 2, "done": 1, "chunks": 0, "message": "",
    }  # fmt: skip
    release.set()
    try:
        await asyncio.wait_for(one_ended.wait(), 30)
    except TimeoutError:
        pytest.fail("the released task was still running after 30 s")
    assert (finishing.state, finishing.message) == ("done", "all done")
    await tasks.stop()  # the host stops
    assert (stuck.state, stuck.message) == ("failed", "stopped with the host")
    assert ended == ["done"]  # a task cut off by the stop records nothing more
    assert [t.id for t in tasks.recent("eval")] == [stuck.id]


async def test_what_chats_and_models_wrote_is_shown_as_text_never_markup(console):
    await draft(console, '<script>alert("x")</script><img src=x onerror=alert(1)>')
    await console.h.host.audit.record(
        bot="testbot", actor="fake:<b>eve</b>", channel="fake", command="say", args="<i>hi</i>", result="ok"
    )
    async with console.client() as client:
        await console.login(client, "fake:op")
        review = (await client.get("/console/review")).text
        audit = (await client.get("/console/audit")).text
    assert "<script>alert" not in review and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in review
    assert "<img src=x" not in review
    assert "fake:&lt;b&gt;eve&lt;/b&gt;" in audit and "<i>hi</i>" not in audit


def _multipart(csrf: str, megabytes: int, read: list[int]):
    """A multipart upload of ``megabytes`` MiB sent without a Content-Length (chunked); ``read``
    counts the bytes the server took."""
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="csrf"\r\n\r\n{csrf}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="collection"\r\n\r\nnotes\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()

    async def body():
        for piece in [head, *([b"word " * 13107] * (megabytes * 16)), f"\r\n--{boundary}--\r\n".encode()]:
            read[0] += len(piece)
            yield piece

    return body(), {"content-type": f"multipart/form-data; boundary={boundary}"}


async def test_a_chunked_upload_is_cut_off_at_the_limit_and_unread_without_a_session(console, tmp_path):
    read = [0]
    async with console.client() as client:
        body, headers = _multipart("", 8, read)
        anonymous = await client.post("/console/knowledge/upload", content=body, headers=headers)
        assert anonymous.status_code == 401
        assert read[0] < 2**20, f"{read[0]} bytes read from a request without a session"
        csrf = await console.login(client, "fake:op")
        read[0] = 0
        body, headers = _multipart(csrf, 8, read)
        huge = await client.post("/console/knowledge/upload", content=body, headers=headers)
        assert huge.status_code == 413 and "over the 1 MiB upload limit" in huge.text
        assert read[0] < 2 * 2**20, f"{read[0]} bytes read of an 8 MiB upload over a 1 MiB limit"
        big_form = await client.post("/console/login", content=b"token=" + b"x" * 2**20 + b"&csrf=x")
        assert big_form.status_code == 413
    assert list((tmp_path / "knowledge" / "notes").iterdir()) == []
