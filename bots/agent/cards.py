"""Import character cards from other chat front ends into our persona format.

Supported: SillyTavern Character Card V1/V2/V3 (JSON, or PNG with a ``chara``/``ccv3`` tEXt
chunk) and ElizaOS character files (legacy and current layouts). Everything the persona format
has no field for is kept under ``extensions.card`` so nothing is lost.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from bots.agent.persona import ExampleDialogue, Persona
from bots.core.config import ConfigError

MAX_CARD_BYTES = 20 * 1024 * 1024


class CardError(ConfigError):
    """A file that is not a usable character card."""


def read_card(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CardError(f"{path}: file not found")
    if path.stat().st_size > MAX_CARD_BYTES:
        raise CardError(f"{path}: larger than {MAX_CARD_BYTES // 2**20} MiB, not a character card")
    if path.suffix.lower() == ".png":
        return _read_png_card(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CardError(f"{path}: not a JSON character card: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: a character card must be a JSON object")
    return data


def _read_png_card(path: Path) -> dict[str, Any]:
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise CardError(f"{path}: a {image.format} image; cards are PNG files")
            chunks = dict(getattr(image, "text", {}) or {})
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # broken files, decompression bombs and oversized text chunks all end here
        raise CardError(f"{path}: not a readable PNG: {type(exc).__name__}: {exc}") from None
    payload = chunks.get("ccv3") or chunks.get("chara")  # V3 wins when both are present
    if not payload:
        raise CardError(f"{path}: PNG has no 'chara' or 'ccv3' text chunk; not a character card")
    try:
        data = json.loads(base64.b64decode(payload, validate=False).decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CardError(f"{path}: the card chunk is not base64 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CardError(f"{path}: the card chunk must hold a JSON object")
    return data


def card_to_persona(card: dict[str, Any]) -> Persona:
    if isinstance(card.get("data"), dict) and str(card.get("spec", "")).startswith("chara_card_v"):
        return _from_tavern(card["data"], spec=str(card["spec"]))
    if "bio" in card or "messageExamples" in card:
        return _from_eliza(card)
    if "name" in card and ("description" in card or "first_mes" in card):
        return _from_tavern(card, spec="chara_card_v1")
    raise CardError("unknown card format: expected a SillyTavern card (V1/V2/V3) or an ElizaOS character")


def import_card(path: Path) -> Persona:
    try:
        return card_to_persona(read_card(path))
    except CardError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise CardError(f"{path}: {exc}") from None


# -- SillyTavern ---------------------------------------------------------------------------------
def _from_tavern(data: dict[str, Any], spec: str) -> Persona:
    name = _text(data.get("name")).strip()
    if not name:
        raise CardError("the card has no name")
    fill = _macros(name)
    own_prompt = fill(_text(data.get("system_prompt")).replace("{{original}}", "")).strip()
    parts = [own_prompt or f"You are {name}."]
    for label, key in (("", "description"), ("Personality: ", "personality"), ("Scenario: ", "scenario")):
        value = fill(_text(data.get(key))).strip()
        if value:
            parts.append(label + value)
    post_history = fill(_text(data.get("post_history_instructions"))).strip()
    if post_history:
        parts.append(post_history)
    return Persona(
        name=name,
        description=_text(data.get("creator_notes")).strip()[:500],
        system_prompt="\n\n".join(parts),
        examples=_parse_mes_example(_text(data.get("mes_example")), name),
        greeting=fill(_text(data.get("first_mes"))).strip(),
        extensions={"card": {"spec": spec, "data": data}},
    )


def _parse_mes_example(text: str, name: str) -> list[ExampleDialogue]:
    """``<START>`` blocks of ``{{user}}: ...`` / ``{{char}}: ...`` lines into example pairs."""
    examples = []
    speaker = re.compile(r"^\s*(\{\{user\}\}|<USER>|\{\{char\}\}|<BOT>)\s*:\s*", re.IGNORECASE)
    for block in re.split(r"<START>", text, flags=re.IGNORECASE):
        turns: list[tuple[str, str]] = []
        for line in block.splitlines():
            match = speaker.match(line)
            if match:
                who = "user" if match.group(1).lower() in ("{{user}}", "<user>") else "char"
                turns.append((who, line[match.end() :]))
            elif turns:
                turns[-1] = (turns[-1][0], turns[-1][1] + "\n" + line)
        pending_user = None
        for who, said in turns:
            said = _macros(name)(said).strip()
            if who == "user":
                pending_user = said
            elif pending_user is not None:
                examples.append(ExampleDialogue(user=pending_user, persona=said))
                pending_user = None
    return examples


# -- ElizaOS -------------------------------------------------------------------------------------
def _from_eliza(card: dict[str, Any]) -> Persona:
    name = _text(card.get("name")).strip()
    if not name:
        raise CardError("the character has no name")
    fill = _macros(name)
    parts = [fill(_text(card.get("system"))).strip() or f"You are {name}."]
    bio = _lines(card.get("bio"))
    if bio:
        parts.append("About you:\n" + "\n".join(f"- {fill(line)}" for line in bio))
    lore = _lines(card.get("lore"))
    if lore:
        parts.append("Your background:\n" + "\n".join(f"- {fill(line)}" for line in lore))
    style_table = card.get("style") if isinstance(card.get("style"), dict) else {}
    style = [fill(s) for key in ("all", "chat") for s in _lines(style_table.get(key))]
    adjectives = _lines(card.get("adjectives"))
    if adjectives:
        style.append("You are " + ", ".join(adjectives) + ".")
    return Persona(
        name=name,
        system_prompt="\n\n".join(parts),
        style=style,
        examples=_eliza_examples(card.get("messageExamples"), name),
        extensions={"card": {"spec": "elizaos", "data": card}},
    )


def _eliza_examples(raw: Any, name: str) -> list[ExampleDialogue]:
    conversations = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, dict) and isinstance(item.get("examples"), list):
            conversations.append(item["examples"])  # current layout
        elif isinstance(item, list):
            conversations.append(item)  # legacy layout
    examples = []
    agent_names = {name.lower(), "{{agentname}}", "{{char}}"}
    for conversation in conversations:
        pending_user = None
        for turn in conversation:
            if not isinstance(turn, dict):
                continue
            speaker = _text(turn.get("user") or turn.get("name")).lower()
            content = turn.get("content")
            said = _macros(name)(_text(content.get("text") if isinstance(content, dict) else content))
            if not said.strip():
                continue
            if speaker in agent_names:
                if pending_user is not None:
                    examples.append(ExampleDialogue(user=pending_user, persona=said.strip()))
                    pending_user = None
            else:
                pending_user = said.strip()
    return examples


# -- helpers -------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _lines(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def _macros(name: str):
    replacements = {
        "{{char}}": name, "<BOT>": name, "{{agentName}}": name,
        "{{user}}": "the user", "<USER>": "the user", "{{user1}}": "the user",
    }  # fmt: skip

    def fill(text: str) -> str:
        for macro, value in replacements.items():
            text = re.sub(re.escape(macro), value, text, flags=re.IGNORECASE)
        return text

    return fill
