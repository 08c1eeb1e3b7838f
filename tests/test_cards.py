"""Character card import: published SillyTavern and ElizaOS cards, and hostile files."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from bots.agent.cards import CardError, card_to_persona, import_card


def test_sillytavern_png_v2_with_lorebook(shared_cards):
    persona = import_card(shared_cards / "default_Seraphina.png")
    assert persona.name == "Seraphina"
    assert "Seraphina" in persona.system_prompt and "{{char}}" not in persona.system_prompt
    assert persona.greeting
    card = persona.extensions["card"]
    assert card["spec"] == "chara_card_v2"
    assert len(card["data"]["character_book"]["entries"]) == 4  # kept, not dropped


def test_sillytavern_json_v2(shared_cards):
    persona = import_card(shared_cards / "default_CodingSensei.chara.json")
    assert persona.name == "Coding Sensei"
    assert "coding" in persona.system_prompt.lower()
    assert persona.extensions["card"]["data"]["creator"] == "RossAscends"


def test_elizaos_legacy_layout(shared_cards):
    persona = import_card(shared_cards / "c3po.character.json")
    assert persona.name == "C-3PO"
    assert len(persona.examples) >= 2
    assert persona.examples[0].user == "Can you help me with this task?"
    assert persona.examples[0].persona.startswith("Oh my!")
    assert persona.style


def test_elizaos_current_layout(shared_cards):
    persona = import_card(shared_cards / "eliza-default-8-16.json")
    assert persona.name == "Eliza"
    assert persona.system_prompt.startswith("You are Eliza.")
    assert persona.examples[0].user == "can you help me with this?"
    assert "warm and direct" in persona.style


def test_v2_json_card_written_here(tmp_path):
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Ferry Captain",
            "description": "{{char}} runs the ferry to Shiyu.",
            "personality": "gruff",
            "scenario": "",
            "first_mes": "Tickets, {{user}}.",
            "mes_example": "<START>\n{{user}}: Is the sea rough?\n{{char}}: Rough enough.",
            "system_prompt": "{{original}} Never leave the wheel.",
            "post_history_instructions": "",
            "alternate_greetings": ["Mind the gap."],
            "tags": ["sea"],
            "creator": "us",
            "character_version": "1",
            "extensions": {"custom/thing": {"kept": True}},
            "unknown_future_key": 42,
        },
    }
    path = tmp_path / "captain.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    persona = import_card(path)
    assert persona.name == "Ferry Captain"
    assert persona.system_prompt.startswith("Never leave the wheel.")
    assert (
        "Ferry Captain runs the ferry" in persona.system_prompt
        and "Personality: gruff" in persona.system_prompt
    )
    assert persona.greeting == "Tickets, the user."
    assert [(e.user, e.persona) for e in persona.examples] == [("Is the sea rough?", "Rough enough.")]
    kept = persona.extensions["card"]["data"]
    assert kept["extensions"] == {"custom/thing": {"kept": True}} and kept["unknown_future_key"] == 42


def test_v1_card_with_example_dialogue():
    card = {
        "name": "Wen",
        "description": "{{char}} keeps the light.",
        "personality": "patient",
        "first_mes": "Come in, {{user}}.",
        "mes_example": "<START>\n{{user}}: Is it foggy?\n{{char}}: Thick as wool.\nStay inside.\n"
        "<START>\n<USER>: Tea?\n<BOT>: Always.",
    }
    persona = card_to_persona(card)
    assert persona.system_prompt.startswith("You are Wen.")
    assert "Wen keeps the light." in persona.system_prompt and "Personality: patient" in persona.system_prompt
    assert persona.greeting == "Come in, the user."
    assert [(e.user, e.persona) for e in persona.examples] == [
        ("Is it foggy?", "Thick as wool.\nStay inside."),
        ("Tea?", "Always."),
    ]


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG header that claims a huge image (a decompression bomb), with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _png_with_chunks(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def test_v3_chunk_wins_over_chara(tmp_path):
    v2 = {"spec": "chara_card_v2", "data": {"name": "Old", "description": "v2"}}
    v3 = {"spec": "chara_card_v3", "data": {"name": "New", "description": "v3"}}
    encode = lambda d: base64.b64encode(json.dumps(d).encode()).decode()  # noqa: E731
    path = tmp_path / "card.png"
    path.write_bytes(_png_with_chunks(chara=encode(v2), ccv3=encode(v3)))
    assert import_card(path).name == "New"


@pytest.mark.parametrize(
    ("name", "payload", "message"),
    [
        ("plain.png", _png_with_chunks(Comment="hello"), "no 'chara'"),
        ("notpng.png", b"this is not an image", "not a readable PNG"),
        ("badb64.png", _png_with_chunks(chara="%%%not base64%%%"), "not base64 JSON"),
        ("garbage.json", b"{not json", "not a JSON character card"),
        ("list.json", b"[1, 2]", "must be a JSON object"),
        ("unknown.json", b'{"foo": "bar"}', "unknown card format"),
        ("noname.json", b'{"spec": "chara_card_v2", "data": {"name": ""}}', "no name"),
        ("nested.json", b"[" * 100_000 + b"]" * 100_000, "not a JSON character card"),
        ("bomb.png", _png_declaring(200_000, 200_000), "not a readable PNG"),
    ],
)
def test_hostile_or_wrong_files_give_clear_errors(tmp_path, name, payload, message):
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(CardError, match=message) as info:
        import_card(path)
    assert str(path) in str(info.value)
