"""The one event model every adapter translates to and from.

Canonical ids are ``"platform:id"`` (``telegram:123``, ``discord:456``, ``wechat:wxid_x``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class ChannelKind(StrEnum):
    DM = "dm"
    GROUP = "group"
    THREAD = "thread"


def canonical_id(platform: str, local_id: str) -> str:
    return f"{platform}:{local_id}"


@dataclass(frozen=True, slots=True)
class UserRef:
    platform: str
    id: str
    name: str = ""
    is_bot: bool = False
    username: str = ""  # the platform's handle (Telegram @username, Discord user name), if any

    @property
    def canonical(self) -> str:
        return canonical_id(self.platform, self.id)

    @property
    def display(self) -> str:
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class ChannelRef:
    platform: str
    id: str
    kind: ChannelKind = ChannelKind.DM
    name: str = ""
    parent_id: str | None = None  # the group a thread belongs to

    @property
    def canonical(self) -> str:
        return canonical_id(self.platform, self.id)

    @property
    def is_dm(self) -> bool:
        return self.kind is ChannelKind.DM


# Segments: the structured parts of a message beside its plain text.
@dataclass(frozen=True, slots=True)
class Mention:
    user_id: str  # platform-local id of the mentioned user
    name: str = ""


@dataclass(frozen=True, slots=True)
class ReplyTo:
    message_id: str
    author_id: str = ""  # platform-local id of the author of the message replied to


@dataclass(frozen=True, slots=True)
class Attachment:
    kind: str  # "image" | "file" | ...
    url: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class Joined:
    """Someone joined the chat (the event's author is who added them, or the joiner)."""

    user_id: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Transcript:
    """The conversation before this message, as the platform sent it along (OpenAI-style clients
    send the whole conversation with every message): ``(role, text)`` pairs, oldest first, role
    "human" or "ai". The agent answers such a message with this as its history, in place of its
    own memory of the chat (where a turn the client has since edited or dropped would linger)."""

    turns: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:  # lists after a JSON round trip (the inbox) become tuples again
        object.__setattr__(self, "turns", tuple((str(role), str(text)) for role, text in self.turns))


Segment = Mention | ReplyTo | Attachment | Joined | Transcript


@dataclass(slots=True)
class MessageEvent:
    """One inbound message, whatever the platform."""

    platform: str
    message_id: str
    author: UserRef
    channel: ChannelRef
    text: str
    self_id: str = ""  # the bot's own platform-local user id on this channel
    self_name: str = ""  # the bot's own username there ("/cmd@self_name" is for this bot)
    segments: tuple[Segment, ...] = ()
    to_me: bool = False  # set by adapters that know (e.g. WeCom only delivers @bot messages)
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    raw: Any = None
    session_id: str = ""  # filled by the pipeline from the memory scope

    @property
    def id(self) -> str:
        """Canonical message id, the dedupe key."""
        return f"{self.platform}:{self.channel.id}:{self.message_id}"

    @property
    def mentions(self) -> list[Mention]:
        return [s for s in self.segments if isinstance(s, Mention)]

    @property
    def reply_to(self) -> ReplyTo | None:
        return next((s for s in self.segments if isinstance(s, ReplyTo)), None)

    @property
    def joined(self) -> list[Joined]:
        return [s for s in self.segments if isinstance(s, Joined)]

    @property
    def transcript(self) -> Transcript | None:
        return next((s for s in self.segments if isinstance(s, Transcript)), None)

    @property
    def mentions_me(self) -> bool:
        return bool(self.self_id) and any(m.user_id == self.self_id for m in self.mentions)

    @property
    def replies_to_me(self) -> bool:
        reply = self.reply_to
        return reply is not None and bool(self.self_id) and reply.author_id == self.self_id


@dataclass(frozen=True, slots=True)
class Outbound:
    target: ChannelRef
    text: str
    reply_to: str | None = None  # platform message id to answer
    markup: str = "plain"  # "plain" | "markdown"
    # the same for every try at sending this part (set by the outbox): platforms that dedupe
    # resends (Discord's nonce) send it once however often a restart replays it
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class SentRef:
    platform: str
    channel_id: str
    message_id: str


# -- serialisation (the durable inbox stores events to replay them after a restart) -----------------
_SEGMENT_TYPES: dict[str, type[Segment]] = {
    "mention": Mention,
    "reply": ReplyTo,
    "attachment": Attachment,
    "joined": Joined,
    "transcript": Transcript,
}


def channel_to_dict(channel: ChannelRef) -> dict[str, Any]:
    return {
        "platform": channel.platform,
        "id": channel.id,
        "kind": channel.kind.value,
        "name": channel.name,
        "parent_id": channel.parent_id,
    }


def channel_from_dict(data: dict[str, Any]) -> ChannelRef:
    return ChannelRef(
        data["platform"], data["id"], ChannelKind(data["kind"]), data.get("name", ""), data.get("parent_id")
    )


# per segment class, its type tag and fields: each message is stored, and dataclasses.asdict's
# recursive deep copy cost more than the rest of the conversion (the fields are immutable values)
_SEGMENT_FIELDS: dict[type, tuple[str, tuple[str, ...]]] = {
    cls: (kind, tuple(f.name for f in fields(cls))) for kind, cls in _SEGMENT_TYPES.items()
}


def segment_to_dict(segment: Segment) -> dict[str, Any]:
    """A segment as a dict, its type tag first (``Transcript.turns`` stays a tuple of pairs)."""
    known = _SEGMENT_FIELDS.get(type(segment))
    if known is None:  # a subclass: its own fields, the tag of the class it extends
        kind = next(k for k, cls in _SEGMENT_TYPES.items() if isinstance(segment, cls))
        known = (kind, tuple(f.name for f in fields(segment)))
    kind, names = known
    data: dict[str, Any] = {"type": kind}
    for name in names:
        data[name] = getattr(segment, name)
    return data


def event_to_dict(event: MessageEvent) -> dict[str, Any]:
    """A JSON-safe copy of an event; ``raw`` (the platform payload) is left out."""
    segments = [segment_to_dict(segment) for segment in event.segments]
    author = event.author
    return {
        "platform": event.platform,
        "message_id": event.message_id,
        "author": {
            "platform": author.platform,
            "id": author.id,
            "name": author.name,
            "is_bot": author.is_bot,
            "username": author.username,
        },
        "channel": channel_to_dict(event.channel),
        "text": event.text,
        "self_id": event.self_id,
        "self_name": event.self_name,
        "segments": segments,
        "to_me": event.to_me,
        "timestamp": event.timestamp.isoformat(),
    }


def event_from_dict(data: dict[str, Any]) -> MessageEvent:
    segments = []
    for item in data.get("segments", []):
        fields = dict(item)
        segments.append(_SEGMENT_TYPES[fields.pop("type")](**fields))
    return MessageEvent(
        platform=data["platform"],
        message_id=data["message_id"],
        author=UserRef(**data["author"]),
        channel=channel_from_dict(data["channel"]),
        text=data["text"],
        self_id=data.get("self_id", ""),
        self_name=data.get("self_name", ""),
        segments=tuple(segments),
        to_me=data.get("to_me", False),
        timestamp=datetime.fromisoformat(data["timestamp"]),
    )
