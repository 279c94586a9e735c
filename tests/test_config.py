"""Settings: defaults → TOML → env → overrides; bad values fail naming the key; secrets stay hidden."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import pytest

from bot.core.config import ConfigError, SecretRedactingFilter
from bot.startup import load_settings
from tests.support import random_text

AES = "A" * 43
KEY = "flask-key-" + random_text(32)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_need_no_server():
    settings = load_settings(environ={})
    assert settings.database.url.startswith("sqlite:///")
    assert settings.redis.url == ""
    assert settings.app.timezone == "Asia/Shanghai"
    assert settings.wecom.api_base_url == "https://qyapi.weixin.qq.com/cgi-bin/"


def test_precedence_defaults_file_env_overrides(tmp_path):
    path = write(tmp_path, '[app]\ntimezone = "Europe/Berlin"\nlog_level = "DEBUG"\n'
                           '[wecom]\ncorp_id = "wwfile"\nagent_id = 7\n[worker]\nmax_attempts = 4\n')
    env = {"SCRM_WECOM_CORP_ID": "wwenv", "SCRM_WORKER_MAX_ATTEMPTS": "6", "SCRM_WORKER_ENABLED": "false"}
    settings = load_settings(path, overrides={"worker": {"max_attempts": 9}}, environ=env)
    assert settings.app.timezone == "Europe/Berlin"  # file over default
    assert settings.app.log_level == "DEBUG"
    assert settings.wecom.corp_id == "wwenv"  # env over file
    assert settings.wecom.agent_id == 7
    assert settings.worker.max_attempts == 9  # overrides over env
    assert settings.worker.enabled is False  # env string parsed as bool


def test_config_file_from_scrm_config_env(tmp_path):
    path = write(tmp_path, '[database]\nurl = "sqlite:///elsewhere.db"\n')
    assert load_settings(environ={"SCRM_CONFIG": str(path)}).database.url == "sqlite:///elsewhere.db"


def test_documented_env_names_are_read():
    env = {"SCRM_DATABASE_URL": "postgresql://u:pw@db/scrm", "SCRM_REDIS_URL": "redis://localhost:6379/0",
           "SCRM_WECOM_CORP_ID": "ww1", "SCRM_WECOM_TOKEN": "tok", "SCRM_WECOM_ENCODING_AES_KEY": AES,
           "SCRM_WECOM_SECRET": "s3cr3t-value", "SCRM_WECOM_AGENT_ID": "1000002",
           "SCRM_WECOM_API_BASE_URL": "http://127.0.0.1:8001/cgi-bin", "SCRM_APP_SECRET_KEY": KEY,
           "SCRM_APP_TIMEZONE": "Asia/Tokyo"}
    s = load_settings(environ=env)
    assert (s.database.url, s.redis.url, s.wecom.corp_id, s.wecom.token, s.wecom.encoding_aes_key) == (
        "postgresql://u:pw@db/scrm", "redis://localhost:6379/0", "ww1", "tok", AES)
    assert (s.wecom.secret, s.wecom.agent_id, s.app.secret_key, s.app.timezone) == (
        "s3cr3t-value", 1000002, KEY, "Asia/Tokyo")
    assert s.wecom.api_base_url == "http://127.0.0.1:8001/cgi-bin/"  # trailing slash added


@pytest.mark.parametrize("source,key", [
    ({"SCRM_APP_TIMEZONE": "Mars/Olympus"}, "app.timezone"),
    ({"SCRM_WECOM_AGENT_ID": "twelve"}, "wecom.agent_id"),
    ({"SCRM_WECOM_ENCODING_AES_KEY": "short", "SCRM_WECOM_TOKEN": "t", "SCRM_WECOM_CORP_ID": "c"},
     "wecom.encoding_aes_key"),
    ({"SCRM_WECOM_TOKEN": "has space", "SCRM_WECOM_ENCODING_AES_KEY": AES, "SCRM_WECOM_CORP_ID": "c"}, "wecom.token"),
    ({"SCRM_WECOM_TOKEN": "tok", "SCRM_WECOM_ENCODING_AES_KEY": AES}, "wecom.corp_id"),
    ({"SCRM_WECOM_TOKEN": "tok", "SCRM_WECOM_CORP_ID": "c"}, "wecom.encoding_aes_key"),
    ({"SCRM_DATABASE_URL": "mysql://x/y"}, "database.url"),
    ({"SCRM_DATABASE_URL": "not a url"}, "database.url"),
    ({"SCRM_REDIS_URL": "http://localhost"}, "redis.url"),
    ({"SCRM_WECOM_API_BASE_URL": "ftp://x"}, "wecom.api_base_url"),
    ({"SCRM_WORKER_ENABLED": "maybe"}, "worker.enabled"),
    ({"SCRM_WORKER_POLL_SECONDS": "0"}, "worker.poll_seconds"),
    ({"SCRM_WEBHOOK_MAX_BODY_BYTES": "-1"}, "webhook.max_body_bytes"),
    ({"SCRM_APP_LOG_LEVEL": "LOUD"}, "app.log_level"),
])
def test_invalid_values_fail_naming_the_key(source, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(environ=source)


def test_unknown_keys_and_sections_in_the_file_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"wecom\.corpid"):
        load_settings(write(tmp_path, '[wecom]\ncorpid = "typo"\n'), environ={})
    with pytest.raises(ConfigError, match=r"\[wechat\]"):
        load_settings(write(tmp_path, '[wechat]\nx = 1\n'), environ={})


def test_unknown_keys_get_a_did_you_mean_hint(tmp_path):
    with pytest.raises(ConfigError, match=r"worker\.pollseconds .*\(did you mean worker\.poll_seconds\?\)"):
        load_settings(write(tmp_path, "[worker]\npollseconds = 5\n"), environ={})
    with pytest.raises(ConfigError, match=r"\[tier\] .*\(did you mean tiers\?\)"):
        load_settings(write(tmp_path, "[tier]\nx = 1\n"), environ={})


def test_an_unknown_environment_variable_is_an_error_like_an_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown environment variable SCRM_WORKER_POLLSECONDS "
                                          r"\(did you mean SCRM_WORKER_POLL_SECONDS\?\)"):
        load_settings(environ={"SCRM_WORKER_POLLSECONDS": "5"})
    with pytest.raises(ConfigError, match=r"SCRM_NOTHING_LIKE_IT$"):
        load_settings(environ={"SCRM_NOTHING_LIKE_IT": "1"})
    not_settings = {"SCRM_CONFIG": "", "SCRM_TEST_DATABASE_URL": "x", "SCRM_CI_REDIS_URL": "y", "SCRMX": "z"}
    assert load_settings(environ=not_settings) == load_settings(environ={})


def test_unreadable_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[app\n"), environ={})


@pytest.mark.parametrize("variable,value,message", [
    ("SCRM_WEBHOOK_STORE_TIMEOUT_SECONDS", "nan", "webhook.store_timeout_seconds must be a finite number, got 'nan'"),
    ("SCRM_WORKER_LEASE_SECONDS", "NaN", "worker.lease_seconds must be a finite number, got 'NaN'"),
    ("SCRM_WORKER_POLL_SECONDS", "inf", "worker.poll_seconds must be a finite number, got 'inf'"),
    ("SCRM_WORKER_BACKOFF_MAX_SECONDS", "Infinity", "worker.backoff_max_seconds must be a finite number"),
    ("SCRM_WECOM_TIMEOUT_SECONDS", "1e999", "wecom.timeout_seconds must be a finite number, got '1e999'"),
    ("SCRM_WECOM_BUSY_BACKOFF_SECONDS", "-inf", "wecom.busy_backoff_seconds must be a finite number"),
    ("SCRM_TIERS_SUPER_MIN_AMOUNT", "nan", "tiers.super_min_amount must be a finite number"),
    ("SCRM_PREDICTIONS_DISCOUNT_RATE", "nan", "predictions.discount_rate must be a finite number"),
    ("SCRM_WORKER_POLL_SECONDS", "1e10", "worker.poll_seconds must be at most 86400 (a day), got 10000000000.0"),
    ("SCRM_WEBHOOK_STORE_TIMEOUT_SECONDS", "86400.5", "webhook.store_timeout_seconds must be at most 86400"),
    ("SCRM_SCHEDULER_LOCK_SECONDS", "86401", "scheduler.lock_seconds must be at most 86400 (a day), got 86401"),
    ("SCRM_TIERS_SILENT_DAYS", "99999999999", "tiers.silent_days must be at most 36500 (a hundred years)"),
    ("SCRM_KF_WINDOW_HOURS", "87601", "kf.window_hours must be at most 87600 (ten years), got 87601"),
    ("SCRM_SCHEDULER_TAGS_PUSH_MINUTES", "9999999999", "scheduler.tags_push_minutes must be at most 525600 (a year)"),
    ("SCRM_OUTBOX_DAILY_CAP", "99999999999999999999", "outbox.daily_cap must be at most 2147483647"),
    ("SCRM_TIERS_SUPER_MIN_AMOUNT", "1e300", "tiers.super_min_amount must be at most 2147483647"),
])
def test_numbers_that_are_not_finite_or_longer_than_a_day_fail_naming_the_setting(variable, value, message):
    with pytest.raises(ConfigError) as info:
        load_settings(environ={variable: value})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_not_finite_numbers_in_the_file_fail_too_and_a_day_is_allowed(tmp_path):
    for text, key in (("[worker]\npoll_seconds = inf\n", "worker.poll_seconds"),
                      ("[webhook]\nstore_timeout_seconds = nan\n", "webhook.store_timeout_seconds"),
                      ("[worker]\nlease_seconds = -nan\n", "worker.lease_seconds")):
        with pytest.raises(ConfigError, match=rf"^{key.replace('.', r'[.]')} must be a finite number"):
            load_settings(write(tmp_path, text), environ={})
    with pytest.raises(ConfigError, match=r"^worker\.lease_seconds must be a finite number"):
        load_settings(overrides={"worker": {"lease_seconds": float("nan")}}, environ={})
    settings = load_settings(environ={"SCRM_WORKER_POLL_SECONDS": "86400", "SCRM_WECOM_TIMEOUT_SECONDS": "0.5"})
    assert (settings.worker.poll_seconds, settings.wecom.timeout_seconds) == (86400.0, 0.5)


def test_a_config_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Notepad's "UTF-8" before 2019 wrote a BOM first: tomllib called it an invalid statement at line 1."""
    path = tmp_path / "config.toml"
    path.write_bytes('\ufeff# 客户分层\n[app]\nbrand_name = "小店"\n'.encode())
    assert load_settings(path, environ={}).app.brand_name == "小店"


def test_a_config_file_that_is_not_utf8_fails_naming_the_file_and_the_byte(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes('# 客户分层\n[app]\ntimezone = "Asia/Shanghai"\n'.encode("gbk"))  # saved as GBK
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == (f"config file {path} must be UTF-8: the byte at offset 2 is not (0xbf); "
                               "save it as UTF-8")
    path.write_text('# 客户分层\n[app]\ntimezone = "Asia/Shanghai"\n', encoding="utf-8")
    assert load_settings(path, environ={}).app.timezone == "Asia/Shanghai"


def test_wrong_type_in_file_names_key_without_echoing_a_secret(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[wecom]\nsecret = 12.5\n"), environ={})
    assert "wecom.secret" in str(info.value) and "12.5" not in str(info.value)


def test_secrets_are_masked_in_repr_and_redacted_dict():
    s = load_settings(environ={"SCRM_WECOM_SECRET": "topsecretvalue", "SCRM_APP_SECRET_KEY": KEY,
                               "SCRM_DATABASE_URL": "postgresql://scrm:dbpassword@db/scrm"})
    text = repr(s) + repr(s.wecom) + str(s.redacted())
    for secret in ("topsecretvalue", KEY, "dbpassword"):
        assert secret not in text
    assert s.redacted()["wecom"]["secret"] == "***"


def test_secret_values_are_scrubbed_from_log_lines(caplog):
    s = load_settings(environ={"SCRM_WECOM_SECRET": "topsecretvalue"})
    logger = logging.getLogger("test.redaction")
    with caplog.at_level(logging.INFO):
        caplog.handler.addFilter(SecretRedactingFilter(s.secret_values()))
        logger.info("GET /cgi-bin/gettoken?corpid=ww&corpsecret=%s", "topsecretvalue")
        try:
            raise RuntimeError("failed with topsecretvalue")
        except RuntimeError:
            logger.exception("oops")
        logger.info("GET /cgi-bin/externalcontact/get?external_userid=wm1&access_token=sbx_Token123 200")
    assert "topsecretvalue" not in caplog.text and "sbx_Token123" not in caplog.text
    assert "corpsecret=***" in caplog.text and "access_token=***" in caplog.text


def test_app_start_with_bad_config_fails_naming_the_key(database_url):
    from bot.web.app import create_app

    with pytest.raises(ConfigError, match="app.timezone"):
        create_app({"database": {"url": database_url}, "app": {"timezone": "Nowhere/City"}}, environ={})


@pytest.mark.parametrize("key", ["changeme", "x" * 31, "k" * 40, "changeme" * 4, "0123456789" * 4,
                                 "aaaaaaaaaabbbbbbbbbbccccccccccdddd"])
def test_a_short_or_guessable_secret_key_stops_the_start_naming_the_setting(key):
    """The sidebar's session is the signed member userid: a known key forges any member's session."""
    for source in ({"environ": {"SCRM_APP_SECRET_KEY": key}}, {"overrides": {"app": {"secret_key": key}}}):
        with pytest.raises(ConfigError, match=r"^app\.secret_key (must be at least 32|is guessable)") as info:
            load_settings(**{"environ": {}, **source})
        assert key not in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["", secrets.token_hex(32), secrets.token_urlsafe(32),
                                 "correct horse battery staple, twice"])
def test_an_empty_or_random_secret_key_loads(key):
    assert load_settings(environ={"SCRM_APP_SECRET_KEY": key}).app.secret_key == key


def test_serve_and_the_web_app_refuse_a_weak_secret_key_in_one_line(database_url):
    from click.testing import CliRunner

    from bot.cli import main
    from bot.web.app import create_app

    with pytest.raises(ConfigError, match="app.secret_key must be at least 32 characters"):
        create_app({"database": {"url": database_url}, "app": {"secret_key": "changeme"}}, environ={})
    result = CliRunner(env={"SCRM_CONFIG": None, "SCRM_DATABASE_URL": database_url,
                            "SCRM_APP_SECRET_KEY": "changeme"}).invoke(main, ["serve", "--port", "9"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: configuration error: app.secret_key must be at least 32 characters, it has 8: set a random one "
        '(python -c "import secrets; print(secrets.token_hex(32))") or leave it empty for a random key per process']


def test_example_config_documents_every_key_and_loads():
    import tomllib
    from dataclasses import fields

    from bot.core.config import Settings

    path = Path(__file__).parent.parent / "config.example.toml"
    example = tomllib.loads(path.read_text(encoding="utf-8"))
    settings = load_settings(path, environ={})
    for section in fields(Settings):
        documented = set(example.get(section.name, {}))
        assert documented == {f.name for f in fields(getattr(settings, section.name))}, section.name
    assert settings == load_settings(environ={})  # the example shows the defaults
