"""The versioned JSON of stream entries: inbound messages (gateway -> worker) and hand-overs
(worker -> gateway).

Every entry is one field ``m`` holding a JSON object with ``"v": 1``. A reader refuses (raises
:class:`MalformedEntry`) anything it cannot use: not JSON, another version, a missing or mistyped
field; the caller logs it and moves it aside, it never stops a process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from bots.core.events import (
    ChannelRef,
    MessageEvent,
    Outbound,
    channel_from_dict,
    channel_to_dict,
    event_from_dict,
    event_to_dict,
)

VERSION = 1
FIELD = "m"  # the one field of every stream entry


class MalformedEntry(ValueError):
    """A stream entry this version cannot read; the message says why."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message a gateway accepted for ``bot`` on its channel ``channel``."""

    bot: str
    channel: str  # the adapter's configured name
    event: MessageEvent
    again: bool = False  # an earlier run accepted it and did not finish it: handle it as a replay
    accepted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class HandOver:
    """What a worker asks the gateway holding ``bot``'s channel ``channel`` to send.

    ``kind="key"``: the outbox rows under ``key`` (recorded before this was published) go to
    ``target``, the parts not sent yet, in order. ``kind="post"``: ``outbound`` as it is (a post
    made without an idempotency key: nothing recorded, at most once).
    """

    kind: Literal["key", "post"]
    bot: str
    channel: str
    target: ChannelRef
    key: str = ""
    outbound: Outbound | None = None


def encode_inbound(entry: Inbound) -> dict[str, str]:
    body = {
        "v": VERSION,
        "bot": entry.bot,
        "channel": entry.channel,
        "again": entry.again,
        "accepted_at": (entry.accepted_at or datetime.now(UTC)).isoformat(),
        "event": event_to_dict(entry.event),
    }
    return {FIELD: json.dumps(body, ensure_ascii=False, separators=(",", ":"))}


def decode_inbound(fields: dict[str, Any]) -> Inbound:
    body = _body(fields)
    try:
        return Inbound(
            bot=_text(body, "bot"),
            channel=_text(body, "channel"),
            event=event_from_dict(body["event"]),
            again=bool(body.get("again", False)),
            accepted_at=datetime.fromisoformat(body["accepted_at"]) if body.get("accepted_at") else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedEntry(f"not an inbound message: {type(exc).__name__}: {exc}") from None


def encode_hand_over(item: HandOver) -> dict[str, str]:
    body: dict[str, Any] = {
        "v": VERSION,
        "kind": item.kind,
        "bot": item.bot,
        "channel": item.channel,
        "target": channel_to_dict(item.target),
    }
    if item.kind == "key":
        body["key"] = item.key
    else:
        assert item.outbound is not None, "a post carries its outbound message"
        body["outbound"] = outbound_to_dict(item.outbound)
    return {FIELD: json.dumps(body, ensure_ascii=False, separators=(",", ":"))}


def decode_hand_over(fields: dict[str, Any]) -> HandOver:
    body = _body(fields)
    try:
        kind = body["kind"]
        target = channel_from_dict(body["target"])
        common = {"bot": _text(body, "bot"), "channel": _text(body, "channel"), "target": target}
        if kind == "key":
            return HandOver("key", key=_text(body, "key"), **common)
        if kind == "post":
            return HandOver("post", outbound=outbound_from_dict(body["outbound"]), **common)
        raise ValueError(f"unknown kind {kind!r}")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MalformedEntry(f"not a hand-over: {type(exc).__name__}: {exc}") from None


def outbound_to_dict(outbound: Outbound) -> dict[str, Any]:
    return {
        "target": channel_to_dict(outbound.target),
        "text": outbound.text,
        "reply_to": outbound.reply_to,
        "markup": outbound.markup,
        "idempotency_key": outbound.idempotency_key,
    }


def outbound_from_dict(data: dict[str, Any]) -> Outbound:
    return Outbound(
        channel_from_dict(data["target"]),
        _text(data, "text"),
        data.get("reply_to"),
        data.get("markup", "plain"),
        idempotency_key=data.get("idempotency_key"),
    )


def _body(fields: dict[str, Any]) -> dict[str, Any]:
    raw = fields.get(FIELD) if isinstance(fields, dict) else None
    if raw is None:
        raise MalformedEntry(f"no field {FIELD!r}")
    try:
        body = json.loads(raw)
    except (TypeError, ValueError) as exc:
        raise MalformedEntry(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedEntry("not a JSON object")
    if body.get("v") != VERSION:
        raise MalformedEntry(f"version {body.get('v')!r}; this version reads {VERSION}")
    return body


def _text(body: dict[str, Any], key: str) -> str:
    value = body[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value
