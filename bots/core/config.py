"""Validated configuration: ``config/bots.toml`` plus secrets from the environment / ``.env``.

Unknown keys and wrong types are errors that name the file and the key. Relative paths in
``bots.toml`` are relative to the folder that holds the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CONFIG = Path("config/bots.toml")


class ConfigError(Exception):
    """A config or persona file that cannot be used; the message names file, field and problem."""


def describe_validation_error(source: str | Path, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


M = TypeVar("M", bound=BaseModel)


def channel_options(model: type[M], name: str, kind: str, options: dict[str, Any]) -> M:
    """A channel's ``[[bots.channels]]`` keys validated by its adapter; problems as a ConfigError."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(f"channel {name} ({kind})", exc)) from None


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LLMConfig(StrictModel):
    provider: str = "local"  # an entry point in the `bots.llm` group: local | openai | fake
    model: str | None = None  # model name (openai) or GGUF path (local; default: bundled SmolLM2)
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # name of the env var that holds the key, never the key
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(256, gt=0)
    context_tokens: int = Field(2048, gt=0)  # the model's context window
    # languages the model writes well ("zh", "en"); others are answered by composition (answer_mode
    # auto). None: every language, except the bundled SmolLM2 (English only)
    fluent_languages: list[Literal["zh", "en"]] | None = None
    max_answer_chars: int = Field(4000, gt=0)  # longer answers fail the quality gate (a model looping)
    timeout_s: float = Field(60, gt=0)
    max_retries: int = Field(1, ge=0, le=10)


class MemoryConfig(StrictModel):
    history_tokens: int = Field(768, ge=0)  # history kept in the prompt, newest first
    group_scope: Literal["group", "user"] = "group"  # one shared memory per group, or per member
    max_input_chars: int = Field(4000, gt=0)  # longer messages are cut before the model sees them


class HistoryConfig(StrictModel):
    """Group messages kept for digests (DMs never are)."""

    enabled: bool = True
    keep_days: int = Field(14, ge=1)


class KnowledgeConfig(StrictModel):
    # "use-multilingual-v3" (default), "multilingual-e5-small", "all-MiniLM-L6-v2" (aliases use, e5,
    # minilm), or a sentence-transformers name or path
    embedding_model: str | None = None
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    # an OpenAI-compatible embedding service (`bots embed-server`) instead of in-process models
    embedding_url: str | None = None
    embedding_api_key_env: str = "BOTS_EMBED_API_KEY"
    # a Chroma server (`chroma run`) every worker shares, instead of the index in data_dir
    chroma_url: str | None = Field(None, pattern=r"^https?://[^/\s]+/?$")
    chroma_token_env: str = "BOTS_CHROMA_TOKEN"  # sent as a Bearer token when set
    top_k: int = Field(4, ge=1, le=20)  # passages put in the prompt
    min_similarity: float = Field(0.35, ge=0, le=1)  # dense-only hits below this are dropped
    # weight of the dense ranking against keyword (1.0) in the fusion, by the query's script
    dense_weight_latin: float = Field(2.0, ge=0)
    dense_weight_cjk: float = Field(0.0, ge=0)
    # the last places of the hits kept for the best passages in the other language (cross-lingual)
    cross_slots: int = Field(1, ge=0, le=5)
    # ...and the first place when the translated words and the dense ranking (its first N) agree
    cross_first: int = Field(2, ge=0, le=50)
    entity_weight: float = Field(0.5, ge=0)  # the question's names and numbers, on those passages
    # the question's words translated through the collection's bilingual term map (CC-CEDICT)
    dictionary_weight: float = Field(2.0, ge=0)


class RateLimitConfig(StrictModel):
    # `limits` notation: "10/minute", "100 per hour", "5/second;60/minute"
    per_user: str = "12/minute"
    per_chat: str = "40/minute"
    messages_per_day: int = Field(0, ge=0)  # per user, answered by the model; 0: no limit
    tokens_per_day: int = Field(0, ge=0)  # per user, prompt and answer; 0: no limit
    joins_per_chat: str = "10/minute"  # more joins than this is a raid
    raid_minutes: float = Field(10.0, gt=0)  # how long members who joined in a raid are not answered

    @field_validator("per_user", "per_chat", "joins_per_chat")
    @classmethod
    def _parse(cls, value: str) -> str:
        from limits import parse_many

        parse_many(value)
        return value


def _canonical_ids(ids: list[str]) -> list[str]:
    for value in ids:
        platform, _, local = value.partition(":")
        if not platform or not local:
            raise ValueError(f"{value!r} is not a canonical id like 'telegram:123'")
    return ids


class RolesConfig(StrictModel):
    owners: list[str] = []
    operators: list[str] = []
    banned: list[str] = []

    _canonical = field_validator("owners", "operators", "banned")(_canonical_ids)


class ChannelConfig(BaseModel):
    """One channel of a bot. Adapter-specific keys are validated by the adapter itself."""

    model_config = ConfigDict(extra="allow")
    type: str  # an entry point in the `bots.adapters` group
    name: str | None = None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


MissedPolicy = Literal["skip", "run_once_late", "catch_up"]
JOB_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Asia/Shanghai')") from None
    return name


def check_cron(expression: str) -> str:
    try:
        CronTrigger.from_crontab(expression)
    except ValueError as exc:
        fields = "minute hour day month weekday"
        raise ValueError(f"bad cron expression {expression!r} ({fields}): {exc}") from None
    return expression


class ScheduleConfig(StrictModel):
    """One ``[[bots.schedules]]`` entry: what to post, where, when, and how to treat missed runs."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    job: str  # an importable async function, "plugins.digest:post_digest"
    target: str = ""  # canonical chat id the post goes to; "" when the job sends by itself
    channel: str | None = None  # the bot's channel name, when it has two on one platform
    cron: str | None = None  # "0 21 * * *" (minute hour day month weekday)
    every_minutes: int | None = Field(None, ge=1)  # or an interval
    timezone: str = "UTC"
    missed: MissedPolicy = "run_once_late"  # runs missed while the host was down
    grace_minutes: int = Field(60, ge=1)  # how late run_once_late may still run
    review: bool = False  # operators approve the draft before it is posted
    review_hours: float = Field(4.0, gt=0)  # a draft not approved within this is not posted
    options: dict[str, Any] = {}  # JSON kwargs for the job function

    _cron = field_validator("cron")(lambda v: v if v is None else check_cron(v))
    _tz = field_validator("timezone")(check_timezone)
    _target = field_validator("target")(lambda v: v and _canonical_ids([v])[0])

    @field_validator("job")
    @classmethod
    def _job_ref(cls, ref: str) -> str:
        if not JOB_REF.match(ref):
            raise ValueError(f"job must be 'module:function', got {ref!r}")
        return ref

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleConfig:
        if (self.cron is None) == (self.every_minutes is None):
            raise ValueError("give exactly one of cron or every_minutes")
        return self


class SchedulerConfig(StrictModel):
    review_chats: list[str] = []  # canonical chat ids where drafts are sent for review
    tick_seconds: float = Field(30.0, gt=0)  # picks up CLI changes, expires late drafts
    catch_up_limit: int = Field(24, ge=1)  # at most this many missed runs are caught up

    _chats = field_validator("review_chats")(_canonical_ids)


class WebConfig(StrictModel):
    """The host's web app (``bots serve``, or ``bots run`` with ``enabled``): the OpenAI-compatible
    endpoint, ``/metrics`` and the operators' console."""

    enabled: bool = False  # `bots run` serves it too (`bots serve` always does)
    host: str = "127.0.0.1"  # "0.0.0.0" only behind a TLS proxy
    port: int = Field(8700, ge=0, le=65535)
    metrics: bool = True  # GET /metrics (Prometheus)
    max_body_kb: int = Field(256, ge=1)  # larger request bodies: 413
    key_rate: str = "60/minute"  # requests per OpenAI API key (`limits` notation); over: 429
    upload_max_mb: int = Field(20, ge=1, le=200)  # files operators upload in the console

    @field_validator("key_rate")
    @classmethod
    def _parse_rate(cls, value: str) -> str:
        from limits import parse_many

        parse_many(value)
        return value


class ScaleConfig(StrictModel):
    """The gateway/worker split over Redis Streams (``bots gateway`` and ``bots worker``; ``bots
    run`` ignores it). Every gateway and worker must use the same ``prefix`` and ``shards``."""

    redis_url: str = "redis://127.0.0.1:6379/0"  # $BOTS_REDIS_URL wins (it may hold a password)
    prefix: str = Field("bots", pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # of every Redis key
    shards: int = Field(16, ge=1, le=4096)  # inbound streams; a chat always goes to one
    lease_s: float = Field(5.0, ge=1, le=300)  # a dead worker's shards are taken over after this
    concurrency: int = Field(32, ge=1, le=10_000)  # messages one worker handles at once


class BotConfig(StrictModel):
    name: str
    persona: str
    channels: list[ChannelConfig] = []
    knowledge: list[str] | None = None  # None: the persona's own list
    command_prefix: str = "/"
    keywords: list[str] = []  # extra words that address the bot in groups
    plugins: list[str] | None = None  # None: every discovered plugin
    llm: LLMConfig | None = None  # overrides the top-level [llm]
    schedules: list[ScheduleConfig] = []
    # other bots: none are answered (false), all (true), or those listed ("telegram:123", "123", name)
    answer_bots: bool | list[str] = False
    bot_turns: int = Field(3, ge=1)  # bot messages answered in a chat before a person speaks to the bot
    bot_cooldown_s: float = Field(600, ge=0)  # past that budget, bots are ignored in the chat this long


class AppConfig(StrictModel):
    data_dir: Path = Path("var")
    # the state store: None = SQLite in data_dir; else a SQLAlchemy URL without its password,
    # "postgresql+asyncpg://bots@db.example/bots" (the password comes from database_password_env,
    # or the whole URL from $BOTS_DATABASE_URL)
    database_url: str | None = None
    database_password_env: str = "BOTS_DATABASE_PASSWORD"
    personas_dir: Path = Path("config/personas")
    knowledge_dir: Path = Path("knowledge")
    plugin_dirs: list[Path] = [Path("plugins")]
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    llm: LLMConfig = LLMConfig()
    memory: MemoryConfig = MemoryConfig()
    history: HistoryConfig = HistoryConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    knowledge: KnowledgeConfig = KnowledgeConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    web: WebConfig = WebConfig()
    scale: ScaleConfig = ScaleConfig()
    roles: RolesConfig = RolesConfig()
    muted: list[str] = []  # canonical chat ids the bots stay silent in
    identities: dict[str, list[str]] = {}  # person -> their canonical ids on every platform
    plugins: dict[str, dict[str, Any]] = {}  # [plugins.<name>] tables, validated by each plugin
    bots: list[BotConfig] = []

    _canonical_muted = field_validator("muted")(_canonical_ids)

    @field_validator("database_url")
    @classmethod
    def _no_password_in_file(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a SQLAlchemy URL like 'postgresql+asyncpg://user@host/db'") from None
        if url.password:
            raise ValueError(
                "the URL holds a password: put it in the environment or .env instead (the variable "
                "named by database_password_env, BOTS_DATABASE_PASSWORD by default, or the whole URL "
                "in BOTS_DATABASE_URL)"
            )
        return value

    @field_validator("identities")
    @classmethod
    def _canonical_identities(cls, people: dict[str, list[str]]) -> dict[str, list[str]]:
        for ids in people.values():
            _canonical_ids(ids)
        return people

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _unique_bot_names(self) -> AppConfig:
        names = [bot.name for bot in self.bots]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"bot names must be unique; repeated: {', '.join(twice)}")
        return self

    def resolve_paths(self, base: Path, defaults_base: Path | None = None) -> AppConfig:
        """Paths set in the file are relative to ``base`` (its folder); defaults to the cwd."""
        explicit = self.model_fields_set

        def resolve(path: Path, field: str) -> Path:
            if path.is_absolute():
                return path
            root = base if field in explicit else (defaults_base or Path.cwd())
            return (root / path).resolve()

        return self.model_copy(
            update={
                "data_dir": resolve(self.data_dir, "data_dir"),
                "personas_dir": resolve(self.personas_dir, "personas_dir"),
                "knowledge_dir": resolve(self.knowledge_dir, "knowledge_dir"),
                "plugin_dirs": [resolve(p, "plugin_dirs") for p in self.plugin_dirs],
            }
        )

    def bot(self, name: str) -> BotConfig:
        for bot in self.bots:
            if bot.name == name:
                return bot
        raise ConfigError(f"no bot named {name!r} in the config")


def load_config(path: Path) -> AppConfig:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run `bots init` to create one)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        config = AppConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(path, exc)) from None
    return config.resolve_paths(path.parent)


class EnvSettings(BaseSettings):
    """Process-level settings from the environment (prefix ``BOTS_``) or ``.env``."""

    model_config = SettingsConfigDict(env_prefix="BOTS_", env_file=".env", extra="ignore")
    config: Path = DEFAULT_CONFIG
    log_level: str | None = None


class Secrets:
    """Secrets by env var name, from the process environment first, then ``.env`` files.

    Every value handed out is remembered so the log filter can redact it.
    """

    def __init__(self, env_files: list[Path] | None = None) -> None:
        self._file_values: dict[str, str] = {}
        for env_file in env_files or []:
            if env_file.is_file():
                values = dotenv_values(env_file)
                self._file_values.update({k: v for k, v in values.items() if v})
        self.handed_out: set[str] = set()

    def get(self, name: str) -> SecretStr | None:
        value = os.environ.get(name) or self._file_values.get(name)
        if not value:
            return None
        self.handed_out.add(value)
        return SecretStr(value)

    def require(self, name: str, purpose: str) -> SecretStr:
        secret = self.get(name)
        if secret is None:
            raise ConfigError(f"{purpose} needs the environment variable {name} (set it or add it to .env)")
        return secret
