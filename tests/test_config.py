"""bots.toml validation, path resolution, secrets from .env, and log redaction."""

from __future__ import annotations

import logging

import pytest

from bots.core.config import ConfigError, Secrets, load_config
from bots.core.logs import RedactSecrets


def _write(tmp_path, text):
    path = tmp_path / "bots.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_repo_config_is_valid(repo_root):
    config = load_config(repo_root / "config" / "bots.toml")
    assert config.data_dir == repo_root / "var"
    assert config.personas_dir == repo_root / "config" / "personas"
    assert [b.name for b in config.bots] == ["keeper"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('datadir = "x"\n', "datadir: Extra inputs are not permitted"),
        ('[llm]\nmax_tokens = "many"\n', "llm.max_tokens"),
        ('[memory]\ngroup_scope = "room"\n', "memory.group_scope"),
        ('[rate_limits]\nper_user = "often"\n', "rate_limits.per_user"),
        ('[roles]\nowners = ["alice"]\n', "not a canonical id"),
        ('[[bots]]\nname = "a"\n', "bots.0.persona: Field required"),
        ('[[bots]]\nname = "a"\npersona = "p"\ncolour = "red"\n', "bots.0.colour"),
        ("this is = not toml [", "not valid TOML"),
        ('log_level = "verbose"\n', "log_level"),
        ('muted = ["general"]\n', "not a canonical id"),
        ('[[bots]]\nname = "a"\npersona = "p"\n[[bots]]\nname = "a"\npersona = "q"\n', "repeated: a"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_unreadable_config_file(tmp_path):
    path = tmp_path / "bots.toml"
    path.write_bytes(b"\xff\xfe not utf-8 \x80")
    with pytest.raises(ConfigError, match="cannot be read as UTF-8"):
        load_config(path)


def test_paths_set_in_the_file_are_relative_to_it_and_defaults_to_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    path = _write(tmp_path / "config", 'data_dir = "../state"\n')
    config = load_config(path)
    assert config.data_dir == tmp_path / "state"
    assert config.personas_dir == tmp_path / "config" / "personas"  # the default, from the cwd
    assert config.plugin_dirs == [tmp_path / "plugins"]


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r"file not found.*bots init"):
        load_config(tmp_path / "nope.toml")


def test_channel_options_pass_through_to_the_adapter(tmp_path):
    path = _write(
        tmp_path,
        '[[bots]]\nname = "a"\npersona = "p"\n[[bots.channels]]\ntype = "telegram"\nmode = "webhook"\n',
    )
    channel = load_config(path).bots[0].channels[0]
    assert channel.type == "telegram" and channel.options == {"mode": "webhook"}


def test_secrets_come_from_env_before_dotenv(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("TOKEN_A=from-file\nTOKEN_B=file-b\n")
    monkeypatch.setenv("TOKEN_A", "from-env")
    secrets = Secrets([env_file])
    assert secrets.get("TOKEN_A").get_secret_value() == "from-env"
    assert secrets.get("TOKEN_B").get_secret_value() == "file-b"
    assert secrets.get("MISSING") is None
    assert "from-env" not in repr(secrets.get("TOKEN_A"))
    with pytest.raises(ConfigError, match="needs the environment variable MISSING"):
        secrets.require("MISSING", "the telegram channel")


def test_log_filter_redacts_every_secret_read(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BOT_TOKEN", "123456:SECRET-token-value")
    secrets = Secrets()
    token = secrets.get("BOT_TOKEN").get_secret_value()
    logger = logging.getLogger("test.redaction")
    logger.addFilter(RedactSecrets(lambda: secrets.handed_out))
    caplog.set_level(logging.INFO, logger="test.redaction")
    logger.info("calling https://api.example/bot%s/getMe", token)
    logger.info(f"plain message with {token} inside")
    assert token not in caplog.text
    assert caplog.text.count("***") == 2


def test_console_channel_options_are_checked():
    from bots.adapters.console import ConsoleAdapter

    with pytest.raises(ConfigError, match="bogus_opt"):
        ConsoleAdapter.from_config("console", {"bogus_opt": 3}, Secrets())
    assert ConsoleAdapter.from_config("console", {"speaker": "Wen"}, Secrets()).speaker == "Wen"


def test_a_plugin_table_that_matches_no_plugin_is_an_error(tmp_path):
    from bots.assembly import select_plugins

    path = _write(tmp_path, '[plugins.bascis]\nx = 1\n[[bots]]\nname = "a"\npersona = "p"\n')
    config = load_config(path)
    with pytest.raises(ConfigError, match=r"\[plugins.bascis\]: no plugin of that name"):
        select_plugins(config, config.bots[0])


def test_log_filter_redacts_tracebacks(monkeypatch, caplog):
    monkeypatch.setenv("TG_TOKEN", "987654:traceback-secret")
    secrets = Secrets()
    token = secrets.get("TG_TOKEN").get_secret_value()
    logger = logging.getLogger("test.redaction.tb")
    logger.addFilter(RedactSecrets(lambda: secrets.handed_out))
    caplog.set_level(logging.ERROR, logger="test.redaction.tb")
    try:
        raise ConnectionError(f"cannot reach https://api.telegram.org/bot{token}/getUpdates")
    except ConnectionError:
        logger.exception("polling failed")
    assert "ConnectionError" in caplog.text and "getUpdates" in caplog.text
    assert token not in caplog.text
