"""The WeCom group push channel (消息推送 / 群机器人 webhook): posts into one WeCom group, outbound only.

``POST {base_url}/cgi-bin/webhook/send?key=KEY`` with ``{"msgtype": "text"|"markdown", ...}``. WeCom
answers HTTP 200 with ``errcode``: 0 sent, 45009 over the robot's limit (20 messages a minute),
40058 too long, 93000 a key it does not know. The key names the group, so every post of this channel
goes there, whatever chat id its target carries (use the group's WeCom chat id as a label).

The robot's limit is kept on our side with a moving window (``limits``): a post waits for room
instead of being dropped; a 45009 anyway (another program posting with the same key) waits and
retries. Texts are split by the core to 2048 UTF-8 bytes (markdown: 4096). The key is a credential:
it is never logged, and errors never carry the URL.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from typing import Any, Literal

import aiohttp
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential
from yarl import URL

from bots.core.adapter import Capabilities, EventSink
from bots.core.config import ConfigError, channel_options
from bots.core.events import Outbound, SentRef

log = logging.getLogger("bots.adapters.wecom_push")

OFFICIAL_API = "https://qyapi.weixin.qq.com"
SEND_PATH = "/cgi-bin/webhook/send"
MAX_BYTES = {"text": 2048, "markdown": 4096}
RATE_LIMITED, TOO_LONG, BAD_KEY = 45009, 40058, 93000
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_KEY = re.compile(r"^[A-Za-z0-9_-]{8,128}$")


class WeComPushOptions(BaseModel):
    """Keys a ``[[bots.channels]]`` entry of type "wecom_push" may set."""

    model_config = ConfigDict(extra="forbid")
    key_env: str = Field("WECOM_PUSH_KEY", pattern=_ENV_NAME)
    base_url: str = OFFICIAL_API  # an emulator in tests
    markup: Literal["text", "markdown"] = "text"  # how posts go; a markdown Outbound goes as markdown
    rate: str = "20/minute"  # the robot's limit, in `limits` notation ("20/minute", "3/second")
    retry_after_s: float = Field(60.0, gt=0)  # the pause after a 45009 before sending again
    max_retries: int = Field(3, ge=0, le=10)  # 45009s and network errors retried per post
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = URL(value)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a rate such as '20/minute'") from None
        return value


class WeComPushError(RuntimeError):
    """WeCom refused a post (bad key, too long, still rate limited after the retries)."""


class _Transient(Exception):
    """A network error or a 5xx: worth another try."""


class WeComPushAdapter:
    """One WeCom group robot's webhook as an outbound-only channel (digests, columns, notices)."""

    platform = "wecom"

    def __init__(self, name: str, key: str, settings: WeComPushOptions) -> None:
        self.name = name
        self.settings = settings
        self.capabilities = Capabilities(
            max_length=MAX_BYTES[settings.markup],
            length_unit="utf8",
            markup=frozenset({"plain", "markdown"}),
        )
        self.self_id = ""
        self.self_name = ""
        self._key = key
        self._limits: list[RateLimitItem] = parse_many(settings.rate)
        self._limiter: MovingWindowRateLimiter | None = None
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()  # one post at a time keeps the order of split parts
        self._ids = itertools.count(1)

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], secrets: Any) -> WeComPushAdapter:
        settings = channel_options(WeComPushOptions, name, "wecom_push", options)
        purpose = f"channel {name} (wecom_push)"
        key = parse_key(secrets.require(settings.key_env, purpose).get_secret_value())
        if key is None:
            raise ConfigError(
                f"{purpose}: {settings.key_env} is not a webhook key: set it to the key=... part of the "
                "group robot's webhook URL (or the whole URL)"
            )
        return cls(name, key, settings)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, sink: EventSink) -> None:
        """Nothing comes in on this channel; the key is checked by the first post (no call for it)."""
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))
        log.info("channel %s: WeCom group push, at most %s", self.name, self.settings.rate)

    async def stop(self) -> None:
        if self._session:
            await self._session.close()
            self._session = None

    # -- outbound ------------------------------------------------------------------------------
    async def send(self, outbound: Outbound) -> SentRef:
        msgtype = "markdown" if outbound.markup == "markdown" else self.settings.markup
        content = outbound.text
        if len(content.encode()) > MAX_BYTES[msgtype]:
            raise WeComPushError(
                f"channel {self.name}: a {msgtype} post is at most {MAX_BYTES[msgtype]} bytes "
                f"(got {len(content.encode())}); the core splits to the channel's limit"
            )
        body = {"msgtype": msgtype, msgtype: {"content": content}}
        async with self._lock:
            for attempt in itertools.count():
                await self._wait_for_room()
                try:
                    errcode, errmsg = await self._post(body)
                finally:
                    await self._count_post()
                if errcode != RATE_LIMITED or attempt >= self.settings.max_retries:
                    break
                log.warning(
                    "channel %s: WeCom says the robot is over its limit (45009); retrying in %.1fs",
                    self.name, self.settings.retry_after_s,
                )  # fmt: skip
                await asyncio.sleep(self.settings.retry_after_s)
        self._check(errcode, errmsg)
        return SentRef(self.platform, outbound.target.id, f"push-{next(self._ids)}")

    async def _wait_for_room(self) -> None:
        """Wait (never drop) until every window has room for one more post."""
        limiter = self._require(self._limiter)
        while True:
            full = [item for item in self._limits if not await limiter.test(item, self.name)]
            if not full:
                return
            stats = [await limiter.get_window_stats(item, self.name) for item in full]
            await asyncio.sleep(max(0.01, max(s.reset_time for s in stats) - time.time()))

    async def _count_post(self) -> None:
        """Count a post once WeCom answered it: WeCom counts on arrival, which is no later."""
        limiter = self._require(self._limiter)
        for item in self._limits:
            await limiter.hit(item, self.name)

    async def _post(self, body: dict[str, Any]) -> tuple[int, str]:
        """One post, retried on network errors and 5xx; (errcode, errmsg) of WeCom's answer."""
        session = self._require(self._session)
        url = f"{self.settings.base_url}{SEND_PATH}"
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.max_retries + 1),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    result = await self._post_once(session, url, body)
        except _Transient as exc:
            raise WeComPushError(f"channel {self.name}: posting to WeCom failed ({exc})") from None
        return result

    async def _post_once(
        self, session: aiohttp.ClientSession, url: str, body: dict[str, Any]
    ) -> tuple[int, str]:
        try:
            async with session.post(url, params={"key": self._key}, json=body) as response:
                if response.status >= 500:
                    raise _Transient(f"HTTP {response.status}")
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _Transient(type(exc).__name__) from None  # its text would quote the URL and key
        except ValueError:
            raise WeComPushError(f"channel {self.name}: WeCom's answer is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("errcode"), int):
            raise WeComPushError(f"channel {self.name}: WeCom's answer has no errcode")
        return answer["errcode"], str(answer.get("errmsg", ""))

    def _check(self, errcode: int, errmsg: str) -> None:
        if errcode == 0:
            return
        reason = errmsg.split(",")[0]  # the rest is a hint URL and our IP
        if errcode == BAD_KEY:
            raise WeComPushError(
                f"channel {self.name}: WeCom rejected the key in {self.settings.key_env} (errcode 93000: "
                f"{reason}); copy the key again from the group robot's webhook URL"
            )
        if errcode == RATE_LIMITED:
            raise WeComPushError(
                f"channel {self.name}: still over the robot's limit after {self.settings.max_retries} "
                "retries (errcode 45009); is another program posting with the same key?"
            )
        raise WeComPushError(f"channel {self.name}: WeCom refused the post (errcode {errcode}: {reason})")

    def _require(self, value: Any) -> Any:
        if value is None:
            raise RuntimeError(f"channel {self.name} is not started; cannot send")
        return value


def parse_key(value: str) -> str | None:
    """The webhook key in ``value`` (the key itself or the whole webhook URL); None if it is none."""
    value = value.strip()
    if "key=" in value:
        value = URL(value).query.get("key", "") if "://" in value else value.split("key=", 1)[1]
    return value if _KEY.match(value) else None


__all__ = ["MAX_BYTES", "WeComPushAdapter", "WeComPushError", "WeComPushOptions", "parse_key"]
