"""The stored form of an event (the durable inbox) round-trips every segment type."""

from __future__ import annotations

import json
from dataclasses import asdict

from bots.core.events import (
    Attachment,
    ChannelKind,
    ChannelRef,
    Joined,
    Mention,
    MessageEvent,
    ReplyTo,
    Transcript,
    UserRef,
    event_from_dict,
    event_to_dict,
)

SEGMENTS = (
    Mention("42", "keeper"),
    ReplyTo("m1", "42"),
    Attachment("image", "https://example.org/a.png", "a.png"),
    Joined("7", "newcomer"),
    Transcript((("human", "hi"), ("ai", "hello"))),
)


def test_segments_are_stored_as_asdict_with_their_type() -> None:
    event = MessageEvent(
        "telegram",
        "m2",
        UserRef("telegram", "1", "Ann"),
        ChannelRef("telegram", "-5", ChannelKind.GROUP),
        "hello",
        self_id="42",
        segments=SEGMENTS,
    )
    stored = event_to_dict(event)
    kinds = ["mention", "reply", "attachment", "joined", "transcript"]
    assert stored["segments"] == [{"type": k, **asdict(s)} for k, s in zip(kinds, SEGMENTS, strict=True)]
    assert event_from_dict(json.loads(json.dumps(stored))).segments == SEGMENTS
