"""Personas: YAML files in ``config/personas/``, validated with pydantic.

A bad file gives an error naming the file, the field and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bots.core.config import ConfigError, describe_validation_error

PERSONA_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

APOLOGY = {
    "zh": "……抱歉，我一时走了神，请稍后再问我一次。",
    "en": "Forgive me, my thoughts wandered off just now. Ask me again in a little while.",
}
QUOTA = {
    "zh": "今天就聊到这儿吧，灯要歇一歇。明天再来。",
    "en": "That is enough talk for one day; even a lamp needs rest. Come back tomorrow.",
}
REFUSAL = {
    "zh": "这些是我自己的事，不便细说。我们聊点别的吧。",
    "en": "Some things stay between me and my notebook. Let us talk about something else.",
}
BUSY = {
    "zh": "慢一点，一个一个来，我听不过来了。",
    "en": "Slow down a little, one at a time, please.",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExampleDialogue(_Strict):
    user: str
    persona: str


class ModelSettings(_Strict):
    """Overrides of the top-level [llm] settings for this persona."""

    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)


class GroupPolicy(_Strict):
    reply: Literal["mention-only", "keywords", "always"] = "mention-only"
    keywords: list[str] = []


class Persona(_Strict):
    name: str = Field(min_length=1)
    description: str = ""
    language: str = "en"  # main language: "zh", "en", ...; replies follow the user's language
    system_prompt: str = Field(min_length=1)
    style: list[str] = []  # short rules of voice and manner
    examples: list[ExampleDialogue] = []
    greeting: str = ""
    opening_lines: list[str] = []  # for scheduled posts (columns)
    closing_lines: list[str] = []
    knowledge: list[str] = []  # collection names under knowledge/
    model: ModelSettings = ModelSettings()
    group: GroupPolicy = GroupPolicy()
    citations: bool = True  # append the sources of retrieved passages to answers
    # generate: the model writes every answer; compose: answers are the author's own sentences from
    # the knowledge, framed and cited; auto: the model writes, composition when the gate fails it
    # or the model does not write the asker's language well ([llm] fluent_languages)
    answer_mode: Literal["generate", "compose", "auto"] = "auto"
    answer_openings: list[str] = []  # frames for composed answers, in either language
    answer_closings: list[str] = []
    exemplars: list[str] = []  # short passages of the author's own prose; the nearest shape the voice
    speaker_labels: list[str] = []  # the author in chat transcripts ("立委"): only their lines are quoted
    quote_check: Literal["flag", "remove", "off"] = "flag"  # quotations not found in the corpus
    apology: str = ""  # in-character reply when the model fails; default by language
    busy: str = ""  # in-character reply when a user is rate limited
    quota: str = ""  # in-character reply when a user's daily quota is spent
    refusal: str = ""  # in-character reply instead of an answer that would leak the system prompt
    extensions: dict[str, Any] = {}  # data kept from imported cards

    @field_validator("knowledge")
    @classmethod
    def _collection_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not PERSONA_ID.match(name):
                raise ValueError(f"{name!r} is not a collection folder name (a-z, 0-9, - and _)")
        return names

    @property
    def lang_key(self) -> str:
        return "zh" if self.language.lower().startswith("zh") else "en"

    @property
    def apology_text(self) -> str:
        return self.apology or APOLOGY[self.lang_key]

    @property
    def refusal_text(self) -> str:
        return self.refusal or REFUSAL[self.lang_key]

    @property
    def quota_text(self) -> str:
        return self.quota or QUOTA[self.lang_key]

    @property
    def busy_text(self) -> str:
        return self.busy or BUSY[self.lang_key]


def load_persona(path: Path) -> Persona:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: persona file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a persona file must be a mapping of fields, got {type(raw).__name__}")
    try:
        return Persona.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from None


def dump_persona(persona: Persona) -> str:
    data = persona.model_dump(mode="json", exclude_defaults=True)
    data = {"name": persona.name, "system_prompt": persona.system_prompt, **data}
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


class PersonaLibrary:
    """The personas of one folder, by id (the file name without ``.yaml``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.yaml") if PERSONA_ID.match(p.stem))

    def path(self, persona_id: str) -> Path:
        if not PERSONA_ID.match(persona_id):
            raise ConfigError(f"{persona_id!r} is not a persona id (a-z, 0-9, - and _)")
        return self.folder / f"{persona_id}.yaml"

    def get(self, persona_id: str) -> Persona:
        path = self.path(persona_id)
        if not path.is_file():
            known = ", ".join(self.ids()) or "none"
            raise ConfigError(f"no persona {persona_id!r} in {self.folder} (known: {known})")
        return load_persona(path)
