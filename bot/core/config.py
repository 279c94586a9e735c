"""Settings: built-in defaults → TOML file → ``SCRM_<SECTION>_<KEY>`` env vars → explicit overrides.

Every key has a default here and a documented line in ``config.example.toml``. Values are checked
once, at start, and a bad one raises :class:`ConfigError` naming the key. Secret values never leave
this module in clear: ``repr`` and :meth:`Settings.redacted` mask them, and
:func:`install_secret_redaction` scrubs them from every log line.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from bot.core.privacy import mask_personal_data

ENV_PREFIX = "SCRM_"
CONFIG_ENV = "SCRM_CONFIG"
# SCRM_ variables that are not settings: the config file, and the test suite's and CI's own
NON_SETTING_ENV = (CONFIG_ENV,)
NON_SETTING_ENV_PREFIXES = ("SCRM_TEST_", "SCRM_CI_")
DEFAULT_LOG_LEVEL = "INFO"  # app.log_level "": the services' level (one-shot commands choose their own)
DEFAULT_WECOM_API_BASE_URL = "https://qyapi.weixin.qq.com/cgi-bin/"


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


def _secret() -> Any:
    return field(default="", metadata={"secret": True})


@dataclass(frozen=True)
class AppSettings:
    secret_key: str = _secret()
    timezone: str = "Asia/Shanghai"
    log_level: str = ""
    public_url: str = ""
    trusted_proxies: int = 0
    brand_name: str = "本店"
    templates_dir: str = ""


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///scrm.db"
    echo: bool = False


@dataclass(frozen=True)
class RedisSettings:
    url: str = ""
    key_prefix: str = "scrm"


@dataclass(frozen=True)
class WeComSettings:
    corp_id: str = ""
    agent_id: int = 0
    token: str = _secret()
    encoding_aes_key: str = _secret()
    secret: str = _secret()
    contact_secret: str = _secret()
    contact_token: str = _secret()
    contact_encoding_aes_key: str = _secret()
    kf_secret: str = _secret()
    kf_token: str = _secret()
    kf_encoding_aes_key: str = _secret()
    api_base_url: str = DEFAULT_WECOM_API_BASE_URL
    timeout_seconds: float = 10.0
    busy_retries: int = 3
    busy_backoff_seconds: float = 2.0
    rate_limit_per_minute: int = 10000
    rate_limit_per_hour: int = 150000


@dataclass(frozen=True)
class WebhookSettings:
    max_body_bytes: int = 256 * 1024
    # WeCom waits about 5 s for an answer, then retries: storing an event waits this long for a
    # database lock before answering 503 (WeCom retries; nothing unstored is acknowledged).
    store_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class WorkerSettings:
    enabled: bool = True
    poll_seconds: float = 2.0
    # Inbox threads per process: a burst of adds is welcomed within the welcome code's 20 s.
    threads: int = 4
    batch_size: int = 100
    max_attempts: int = 8
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 3600.0
    # A claim not renewed for this long is a dead worker's; live workers renew every third of it.
    lease_seconds: float = 6.0


def _default_value_rules() -> list[dict[str, Any]]:
    # Seed 000's worked example: high = amount > 1000 and orders > 5 and activity high; mid = the
    # 500–1000 / 3–5 band extended upward (a big spender who is less active is not called low).
    return [
        {"name": "high", "amount_gt": 1000, "orders_gt": 5, "activity_in": ["high"]},
        {"name": "mid", "amount_gte": 500, "orders_gte": 3, "activity_in": ["high", "mid"]},
    ]


def _default_activity_weights() -> dict[str, int]:
    return {"kf_message": 1, "moment_like": 1, "moment_comment": 2, "campaign_reply": 2, "coupon_redeem": 3,
            "added": 1, "group_join": 1}


@dataclass(frozen=True)
class TiersSettings:
    value_rules: list[dict[str, Any]] = field(default_factory=_default_value_rules)
    value_default: str = "low"
    stage_path: str = "ecommerce"
    super_min_orders: int = 6
    super_min_amount: float = 0.0
    intent_tags: list[str] = field(default_factory=lambda: ["意向客户", "已报价"])
    activity_window_days: int = 30
    activity_weights: dict[str, int] = field(default_factory=_default_activity_weights)
    campaign_reply_days: int = 3
    activity_high: int = 8
    activity_mid: int = 3
    active_days: int = 30
    silent_days: int = 90
    score_weight_r: int = 1
    score_weight_f: int = 1
    score_weight_m: int = 1


def _default_reply_rules() -> list[dict[str, Any]]:
    return [
        {"name": "price", "keywords": ["多少钱", "价格", "怎么卖", "报价", "优惠", "打折"]},
        {"name": "order_status", "keywords": ["物流", "快递", "发货", "到哪了"]},
        {"name": "human", "keywords": ["人工", "真人", "转人工"]},
    ]


@dataclass(frozen=True)
class ContactsSettings:
    channels: dict[str, Any] = field(default_factory=dict)
    send_welcome: bool = True
    churn_alert: bool = True


@dataclass(frozen=True)
class KfSettings:
    auto_reply: bool = True
    reply_rules: list[dict[str, Any]] = field(default_factory=_default_reply_rules)
    default_reply_cooldown_minutes: int = 30
    human_takeover_minutes: int = 30
    transfer_rules: list[str] = field(default_factory=lambda: ["human"])
    opt_out_words: list[str] = field(default_factory=lambda: ["退订", "TD"])
    opt_in_words: list[str] = field(default_factory=lambda: ["恢复订阅"])
    window_hours: int = 48
    window_messages: int = 5
    welcome_on_enter: bool = True
    # No automatic reply to a message older than this: a first sync, or one after an outage, reads days back.
    reply_max_age_minutes: int = 60


def _default_tag_rules() -> list[dict[str, Any]]:
    return [
        {"name": "asked_price", "when": "kf_keyword", "keywords": ["多少钱", "价格", "怎么卖", "报价"],
         "tag": "意向/问过价格"},
        {"name": "first_order", "when": "first_order", "tag": "交易/客户首单"},
        {"name": "repeat_buyer", "when": "order_count", "gte": 2, "tag": "交易/复购客户"},
        {"name": "big_spender", "when": "order_amount", "gte": 1000, "tag": "交易/累计消费千元"},
        {"name": "moment_like", "when": "moment_like", "tag": "互动/朋友圈点赞"},
        {"name": "moment_comment", "when": "moment_comment", "tag": "互动/朋友圈评论"},
        {"name": "coupon_user", "when": "coupon_redeemed", "tag": "交易/用过优惠券"},
        {"name": "vip", "when": "tier_entered", "dimension": "value_tier", "value": "high", "tag": "分层/高价值客户"},
    ]


@dataclass(frozen=True)
class TagsSettings:
    default_group: str = "自动标签"
    aliases: dict[str, Any] = field(default_factory=lambda: {"客户已下单": "交易/客户首单"})
    rules: list[dict[str, Any]] = field(default_factory=_default_tag_rules)
    push_to_wecom: bool = True


@dataclass(frozen=True)
class MomentsSettings:
    lookback_days: int = 30


def _default_holidays() -> list[str]:
    return ["new_year", "spring_festival", "lantern", "valentines", "womens_day", "labour_day", "dragon_boat",
            "qixi", "mid_autumn", "national_day", "double_ninth", "double_eleven", "christmas"]


@dataclass(frozen=True)
class GreetingsSettings:
    holidays: list[str] = field(default_factory=_default_holidays)
    send_at: str = "10:00"
    birthday: bool = True
    birthday_coupon: str = "BIRTHDAY"


@dataclass(frozen=True)
class OutboxSettings:
    quiet_hours: str = "21:00-09:00"
    daily_cap: int = 1
    weekly_cap: int = 3
    mass_message_rule: str = "days_in_month"
    remind_after_hours: int = 4
    # Attempts in all for a welcome or kf message whose send got no answer (see config.example.toml).
    resend_attempts: int = 3


def _default_coupon_definitions() -> list[dict[str, Any]]:
    return [
        {"code": "THANKS", "title": "感谢惠顾抵用券", "value": 10, "min_spend": 100, "valid_days": 30},
        {"code": "FLASH", "title": "限时折扣", "percent_off": 12, "min_spend": 0, "valid_days": 3, "tiers": ["mid"]},
        {"code": "VIP", "title": "专属优惠券", "value": 50, "min_spend": 300, "valid_days": 30, "tiers": ["high"]},
        {"code": "WINBACK", "title": "回归礼券", "value": 30, "min_spend": 150, "valid_days": 14},
        {"code": "BIRTHDAY", "title": "生日礼券", "value": 100, "min_spend": 200, "valid_days": 30, "tiers": ["high"]},
        {"code": "NEWBIE", "title": "新客首单券", "value": 20, "min_spend": 99, "valid_days": 7},
    ]


def _default_coupon_schedules() -> list[dict[str, Any]]:
    return [
        {"coupon": "FLASH", "audience": {"value_tiers": ["mid"]}, "cron": "0 10 * * 5", "template": "coupon/flash"},
        {"coupon": "VIP", "audience": {"value_tiers": ["high"]}, "cron": "0 10 8 * *", "template": "coupon/vip"},
    ]


@dataclass(frozen=True)
class CouponsSettings:
    definitions: list[dict[str, Any]] = field(default_factory=_default_coupon_definitions)
    post_purchase: str = "THANKS"
    schedules: list[dict[str, Any]] = field(default_factory=_default_coupon_schedules)
    code_length: int = 12


@dataclass(frozen=True)
class BroadcastsSettings:
    holdout_percent: int = 10
    report_days: int = 14
    dispatch_minutes: int = 1


def _default_sequences() -> list[dict[str, Any]]:
    return [{"name": "new_customer", "start": "added", "exit_on_order": True, "steps": [
        {"day": 3, "template": "sequence/new_customer_guide"},
        {"day": 7, "template": "sequence/new_customer_coupon", "coupon": "NEWBIE", "if_no_order": True},
    ]}]


@dataclass(frozen=True)
class SequencesSettings:
    flows: list[dict[str, Any]] = field(default_factory=_default_sequences)
    run_every_minutes: int = 60


def _default_tier_actions() -> list[dict[str, Any]]:
    return [
        {"dimension": "value_tier", "to": "high", "message": "tier_change/vip", "notify_owner": "staff/vip_upgrade"},
        {"dimension": "rfm_segment", "to": "important_retain", "message": "tier_change/win_back",
         "coupon": "WINBACK", "notify_owner": "staff/win_back_task"},
        {"dimension": "engagement", "to": "churned", "notify_owner": "staff/churned_alert"},
        {"dimension": "churn_risk", "to": "high", "notify_owner": "staff/churn_risk_task"},
    ]


@dataclass(frozen=True)
class TierActionsSettings:
    rules: list[dict[str, Any]] = field(default_factory=_default_tier_actions)


@dataclass(frozen=True)
class PredictionsSettings:
    """BG/NBD + Gamma-Gamma (segments/predict.py): the horizon and discount of the predicted value and
    the least data a fit needs (below any of them the run is refused, saying which)."""

    horizon_days: int = 365
    discount_rate: float = 0.0  # a year, compounded per 30-day period; 0 (the default): undiscounted
    min_customers: int = 500  # with a paid order
    min_history_days: int = 180  # from the first paid order to the as-of day
    min_recent_days: int = 30  # some paid order within this many days
    min_customers_with_three: int = 20  # with 3 or more purchase days
    min_repeat_customers: int = 50  # with a paid repeat purchase (Gamma-Gamma fits on them)


@dataclass(frozen=True)
class SchedulerSettings:
    enabled: bool = True
    retier_at: str = "02:30"
    contacts_resync_at: str = "03:30"
    moments_poll_minutes: int = 30
    tags_push_minutes: int = 10
    outbox_sweep_seconds: int = 30
    lock_seconds: int = 60


DEFAULT_OAUTH_AUTHORIZE_URL = "https://open.weixin.qq.com/connect/oauth2/authorize"
# WeCom's own JS-SDK: the one script the sidebar loads from outside this service (WeCom requires its
# own copy; our CSS and JS are served from here, no CDN).
DEFAULT_JSSDK_URL = "https://res.wx.qq.com/open/js/jweixin-1.2.0.js"


@dataclass(frozen=True)
class SidebarSettings:
    managers: list[str] = field(default_factory=list)
    tag_creators: list[str] = field(default_factory=list)
    session_minutes: int = 30
    authorize_url: str = DEFAULT_OAUTH_AUTHORIZE_URL
    jssdk_url: str = DEFAULT_JSSDK_URL
    ticket_refresh_margin_seconds: int = 600
    daily_coupon_limit: int = 20


@dataclass(frozen=True)
class Settings:
    app: AppSettings = field(default_factory=AppSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    wecom: WeComSettings = field(default_factory=WeComSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    tiers: TiersSettings = field(default_factory=TiersSettings)
    contacts: ContactsSettings = field(default_factory=ContactsSettings)
    kf: KfSettings = field(default_factory=KfSettings)
    tags: TagsSettings = field(default_factory=TagsSettings)
    moments: MomentsSettings = field(default_factory=MomentsSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    greetings: GreetingsSettings = field(default_factory=GreetingsSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    coupons: CouponsSettings = field(default_factory=CouponsSettings)
    broadcasts: BroadcastsSettings = field(default_factory=BroadcastsSettings)
    sequences: SequencesSettings = field(default_factory=SequencesSettings)
    tier_actions: TierActionsSettings = field(default_factory=TierActionsSettings)
    predictions: PredictionsSettings = field(default_factory=PredictionsSettings)
    sidebar: SidebarSettings = field(default_factory=SidebarSettings)

    def __repr__(self) -> str:
        return f"Settings({self.redacted()!r})"

    def as_dict(self) -> dict[str, dict[str, Any]]:
        out = {}
        for section in fields(self):
            values = getattr(self, section.name)
            out[section.name] = {f.name: getattr(values, f.name) for f in fields(values)}
        return out

    def redacted(self) -> dict[str, dict[str, Any]]:
        """The settings as a dict with every secret masked (safe to print or log)."""
        out = self.as_dict()
        for section, key in secret_keys():
            if out[section][key]:
                out[section][key] = "***"
        out["database"]["url"] = redact_url(out["database"]["url"])
        out["redis"]["url"] = redact_url(out["redis"]["url"])
        return out

    def secret_values(self) -> set[str]:
        values = {getattr(getattr(self, s), k) for s, k in secret_keys()}
        for url in (self.database.url, self.redis.url):
            password = urlsplit(url).password if url else None
            if password:
                values.add(password)
        return {v for v in values if v and len(v) >= 4}

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.app.timezone)


# Dataclass reprs would print secrets; mask them on every section.
def _masked_repr(self: Any) -> str:
    parts = []
    for f in fields(self):
        value = getattr(self, f.name)
        shown = "***" if f.metadata.get("secret") and value else repr(value)
        parts.append(f"{f.name}={shown}")
    return f"{type(self).__name__}({', '.join(parts)})"


for _section_cls in (AppSettings, DatabaseSettings, RedisSettings, WeComSettings, WebhookSettings, WorkerSettings,
                     TiersSettings, ContactsSettings, KfSettings, TagsSettings, MomentsSettings,
                     SchedulerSettings, GreetingsSettings, OutboxSettings, SidebarSettings, PredictionsSettings):
    _section_cls.__repr__ = _masked_repr  # type: ignore[method-assign]


def _section_types() -> dict[str, type]:
    return {f.name: f.default_factory for f in fields(Settings)}  # type: ignore[misc]


def secret_keys() -> Iterable[tuple[str, str]]:
    for section, cls in _section_types().items():
        for f in fields(cls):
            if f.metadata.get("secret"):
                yield section, f.name


def redact_url(url: str) -> str:
    if not url:
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"//[^@/]*@", "//***@", url)


# ---------------------------------------------------------------- loading


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build settings checked for their own shape (types, URLs, zones, times, numbers). The rules that
    domains own (tier policy, tag rules, holidays, contact policy, coupons, campaigns) are checked by
    ``bot.startup.load_settings``, which every process starts with. ``config_file`` falls back to
    ``$SCRM_CONFIG``."""
    environ = os.environ if environ is None else environ
    raw: dict[str, dict[str, Any]] = {name: {} for name in _section_types()}
    path = config_file or environ.get(CONFIG_ENV)
    if path:
        _merge(raw, _read_toml(Path(path)), origin=str(path))
    _merge(raw, _from_env(environ), origin="environment")
    if overrides:
        _merge(raw, overrides, origin="overrides")
    settings = _build(raw)
    validate(settings)
    return _normalized(settings)


def _normalized(settings: Settings) -> Settings:
    base_url = settings.wecom.api_base_url
    if base_url.endswith("/"):
        return settings
    return replace(settings, wecom=replace(settings.wecom, api_base_url=base_url + "/"))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
        # Windows Notepad (before 2019) and some editors save UTF-8 with a byte-order mark, which TOML
        # does not allow ("Invalid statement at line 1, column 1"): the text is UTF-8 all the same.
        return tomllib.loads(data.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # TOML is UTF-8; a file saved as GBK (or UTF-16) is not
        raise ConfigError(f"config file {path} must be UTF-8: the byte at offset {exc.start} is not "
                          f"(0x{exc.object[exc.start]:02x}); save it as UTF-8") from None


def _from_env(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The settings given as SCRM_<SECTION>_<KEY>; any other SCRM_ variable is a mistake, as an unknown
    TOML key is (a misspelt override would otherwise be ignored without a word)."""
    names = {f"{ENV_PREFIX}{section}_{f.name}".upper(): (section, f.name)
             for section, cls in _section_types().items() for f in fields(cls)}
    out: dict[str, dict[str, str]] = {}
    for variable, value in environ.items():
        if variable in names:
            section, key = names[variable]
            out.setdefault(section, {})[key] = value
        elif (variable.startswith(ENV_PREFIX) and variable not in NON_SETTING_ENV
              and not variable.startswith(NON_SETTING_ENV_PREFIXES)):
            raise ConfigError(f"unknown environment variable {variable}{_did_you_mean(variable, [*names, CONFIG_ENV])}")
    return out


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def _merge(raw: dict[str, dict[str, Any]], incoming: Mapping[str, Any], origin: str) -> None:
    sections = _section_types()
    for section, values in incoming.items():
        if section not in sections:
            raise ConfigError(f"unknown config section [{section}] in {origin}{_did_you_mean(section, sections)}")
        if not isinstance(values, Mapping):
            raise ConfigError(f"[{section}] in {origin} must be a table of keys")
        known = {f.name for f in fields(sections[section])}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"unknown config key {section}.{key} in {origin}"
                                  + _did_you_mean(f"{section}.{key}", (f"{section}.{k}" for k in known)))
            raw[section][key] = value


def _build(raw: dict[str, dict[str, Any]]) -> Settings:
    built = {}
    for section, cls in _section_types().items():
        kwargs = {}
        for f in fields(cls):
            if f.name in raw[section]:
                kwargs[f.name] = _coerce(f"{section}.{f.name}", raw[section][f.name], _field_kind(f))
        built[section] = cls(**kwargs)
    return Settings(**built)


def _field_kind(f: Any) -> type:
    default = f.default_factory() if f.default is MISSING else f.default
    return type(default)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Convert a TOML or env value to the key's type, or fail naming the key."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
    elif kind is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            # float() takes "nan", "inf" and 1e999 (TOML has nan and inf too): a NaN passes every
            # comparison check and an infinite wait or timeout overflows where it is used.
            if not math.isfinite(number):
                raise ConfigError(f"{key} must be a finite number, got {_describe(key, value)}")
            return number
    elif kind in (list, dict):
        if isinstance(value, str):  # from an env var: JSON
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{key} must be JSON when given as an environment variable") from None
        if isinstance(value, kind):
            return value
    elif kind is str:
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key} must be a {kind.__name__}, got {_describe(key, value)}")


def _describe(key: str, value: Any) -> str:
    section, name = key.split(".", 1)
    if (section, name) in set(secret_keys()):
        return f"a {type(value).__name__}"
    return repr(value)


# ---------------------------------------------------------------- validation

_AES_KEY = re.compile(r"[A-Za-z0-9]{43}")
_TOKEN = re.compile(r"[A-Za-z0-9]{1,32}")
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
MAX_SECONDS = 86_400


def validate(settings: Settings) -> None:
    _check_secret_key(settings.app.secret_key)
    _check_timezone(settings.app.timezone)
    if settings.app.log_level and settings.app.log_level.upper() not in _LOG_LEVELS:
        raise ConfigError(f"app.log_level must be empty or one of {sorted(_LOG_LEVELS)}, "
                          f"got {settings.app.log_level!r}")
    _check_sqlalchemy_url("database.url", settings.database.url)
    if settings.redis.url and urlsplit(settings.redis.url).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError("redis.url must start with redis://, rediss:// or unix://")
    _check_wecom(settings.wecom)
    _check_durations(settings)
    _check_positive("webhook.max_body_bytes", settings.webhook.max_body_bytes)
    _check_positive("webhook.store_timeout_seconds", settings.webhook.store_timeout_seconds)
    for f in fields(settings.worker):
        if f.name != "enabled":
            _check_positive(f"worker.{f.name}", getattr(settings.worker, f.name))
    _check_conversations(settings)
    _check_campaigns(settings)
    _check_sidebar(settings.sidebar)
    if not 0 <= settings.app.trusted_proxies <= 5:
        raise ConfigError(f"app.trusted_proxies must be 0–5 (the reverse proxies in front of this service), "
                          f"got {settings.app.trusted_proxies}")
    _check_predictions(settings.predictions)


MIN_SECRET_KEY_LENGTH = 32
MIN_SECRET_KEY_CHARACTERS = 10  # different characters: a hex key of 32 has about 16, a word typed 4 times fewer
_NEW_KEY_HINT = 'python -c "import secrets; print(secrets.token_hex(32))"'


def _check_secret_key(key: str) -> None:
    """app.secret_key signs the console's and the sidebar's sessions (the sidebar's is the signed member
    userid): whoever knows or guesses it signs in as anyone. Empty is fine (a random key per process);
    a configured one must be long and random. The message never says the key."""
    if not key:
        return
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(f"app.secret_key must be at least {MIN_SECRET_KEY_LENGTH} characters, it has {len(key)}: "
                          f"set a random one ({_NEW_KEY_HINT}) or leave it empty for a random key per process")
    repeated = any(len(key) % n == 0 and key == key[:n] * (len(key) // n) for n in range(1, len(key) // 2 + 1))
    if repeated or len(set(key)) < MIN_SECRET_KEY_CHARACTERS:
        raise ConfigError(f"app.secret_key is guessable (a repeated piece or fewer than {MIN_SECRET_KEY_CHARACTERS} "
                          f"different characters): set a random one ({_NEW_KEY_HINT}) or leave it empty")


def _check_predictions(predictions: PredictionsSettings) -> None:
    if not 1 <= predictions.horizon_days <= 3650:
        raise ConfigError("predictions.horizon_days must be 1–3650")
    if not 0 <= predictions.discount_rate < 1:
        raise ConfigError(f"predictions.discount_rate must be a yearly rate from 0 to below 1 (0.10 = 10 %), "
                          f"got {predictions.discount_rate!r}")
    for f in fields(predictions):
        if f.name.startswith("min_") and getattr(predictions, f.name) < 0:
            raise ConfigError(f"predictions.{f.name} must not be negative")


def _check_sidebar(sidebar: SidebarSettings) -> None:
    for key in ("managers", "tag_creators"):
        userids = getattr(sidebar, key)
        if not isinstance(userids, list) or not all(isinstance(u, str) and u.strip() for u in userids):
            raise ConfigError(f"sidebar.{key} must be a list of WeCom userids")
    if not 1 <= sidebar.session_minutes <= 24 * 60:
        raise ConfigError("sidebar.session_minutes must be 1–1440 (a short-lived staff session)")
    for key in ("authorize_url", "jssdk_url"):
        parts = urlsplit(getattr(sidebar, key))
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ConfigError(f"sidebar.{key} must be an http(s) URL, got {getattr(sidebar, key)!r}")
    if not 0 <= sidebar.ticket_refresh_margin_seconds < 7200:
        raise ConfigError("sidebar.ticket_refresh_margin_seconds must be 0–7199 (tickets live 7200 s)")
    if not 0 <= sidebar.daily_coupon_limit <= 10_000:
        raise ConfigError("sidebar.daily_coupon_limit must be 0–10000 coupons per member per day (0 = none)")


def _check_conversations(settings: Settings) -> None:
    for key in ("default_reply_cooldown_minutes", "human_takeover_minutes"):
        if getattr(settings.kf, key) < 0:
            raise ConfigError(f"kf.{key} must not be negative")
    _check_positive("kf.window_hours", settings.kf.window_hours)
    _check_positive("kf.window_messages", settings.kf.window_messages)
    _check_positive("kf.reply_max_age_minutes", settings.kf.reply_max_age_minutes)
    _check_positive("moments.lookback_days", settings.moments.lookback_days)
    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", settings.greetings.send_at):
        raise ConfigError(f"greetings.send_at must be a local time HH:MM, got {settings.greetings.send_at!r}")
    _check_outbox(settings.outbox)
    for key in ("retier_at", "contacts_resync_at"):
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", getattr(settings.scheduler, key)):
            raise ConfigError(f"scheduler.{key} must be a local time HH:MM, got {getattr(settings.scheduler, key)!r}")
    for key in ("moments_poll_minutes", "tags_push_minutes", "outbox_sweep_seconds", "lock_seconds"):
        _check_positive(f"scheduler.{key}", getattr(settings.scheduler, key))
    if settings.moments.lookback_days > 30:
        raise ConfigError("moments.lookback_days must be at most 30 (WeCom lists moments in windows of ≤30 days)")
    for i, rule in enumerate(settings.kf.reply_rules):
        if not isinstance(rule, dict) or not _is_name(rule.get("name")) or not _str_list(rule.get("keywords")):
            raise ConfigError(f"kf.reply_rules[{i}] needs a name (letters, digits, _) and a non-empty keywords list")
        unknown = set(rule) - {"name", "keywords"}
        if unknown:
            raise ConfigError(f"kf.reply_rules[{i}] has unknown keys {sorted(unknown)}")
    for key in ("opt_out_words", "opt_in_words"):
        if not isinstance(getattr(settings.kf, key), list) or not all(
                isinstance(w, str) and w.strip() for w in getattr(settings.kf, key)):
            raise ConfigError(f"kf.{key} must be a list of non-empty words")
    for state, channel in settings.contacts.channels.items():
        if not isinstance(channel, dict):
            raise ConfigError(f"contacts.channels.{state} must be a table (tags, stage, welcome)")
        unknown = set(channel) - {"tags", "stage", "welcome"}
        if unknown:
            raise ConfigError(f"contacts.channels.{state} has unknown keys {sorted(unknown)}")
        if "tags" in channel and not _str_list(channel["tags"]):
            raise ConfigError(f"contacts.channels.{state}.tags must be a list of tag names")
        if "welcome" in channel and not _is_name(channel["welcome"]):
            raise ConfigError(f"contacts.channels.{state}.welcome must be a template name (letters, digits, _)")
        if "stage" in channel and not isinstance(channel["stage"], str):
            raise ConfigError(f"contacts.channels.{state}.stage must be a stage name")


def _check_outbox(outbox: OutboxSettings) -> None:
    _check_positive("outbox.daily_cap", outbox.daily_cap)
    _check_positive("outbox.weekly_cap", outbox.weekly_cap)


def _check_campaigns(settings: Settings) -> None:
    b = settings.broadcasts
    if not 0 <= b.holdout_percent <= 50:
        raise ConfigError("broadcasts.holdout_percent must be 0–50")
    _check_positive("broadcasts.report_days", b.report_days)
    _check_positive("broadcasts.dispatch_minutes", b.dispatch_minutes)
    _check_positive("sequences.run_every_minutes", settings.sequences.run_every_minutes)
    _check_positive("wecom.rate_limit_per_minute", settings.wecom.rate_limit_per_minute)
    _check_positive("wecom.rate_limit_per_hour", settings.wecom.rate_limit_per_hour)
    _check_positive("worker.lease_seconds", settings.worker.lease_seconds)
    if settings.worker.threads > 32:
        raise ConfigError(f"worker.threads must be 1–32, got {settings.worker.threads}")
    if settings.outbox.resend_attempts < 1:
        raise ConfigError("outbox.resend_attempts must be at least 1")
    if settings.outbox.remind_after_hours < 0:
        raise ConfigError("outbox.remind_after_hours must not be negative")


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_]{1,64}", value) is not None


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)


def _check_wecom(w: WeComSettings) -> None:
    for prefix in ("", "contact_", "kf_"):
        token, key = getattr(w, f"{prefix}token"), getattr(w, f"{prefix}encoding_aes_key")
        if token and not _TOKEN.fullmatch(token):
            raise ConfigError(f"wecom.{prefix}token must be 1–32 letters or digits")
        if key and not _AES_KEY.fullmatch(key):
            raise ConfigError(f"wecom.{prefix}encoding_aes_key must be exactly 43 letters or digits")
        if bool(token) != bool(key):
            raise ConfigError(f"wecom.{prefix}token and wecom.{prefix}encoding_aes_key must be set together")
    if w.token and not w.corp_id:
        raise ConfigError("wecom.corp_id is required when wecom.token is set (it is the callback receive id)")
    if w.agent_id < 0:
        raise ConfigError("wecom.agent_id must not be negative")
    parts = urlsplit(w.api_base_url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"wecom.api_base_url must be an http(s) URL, got {w.api_base_url!r}")
    _check_positive("wecom.timeout_seconds", w.timeout_seconds)
    if w.busy_retries < 0 or w.busy_backoff_seconds < 0:
        raise ConfigError("wecom.busy_retries and wecom.busy_backoff_seconds must not be negative")


def _check_timezone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"app.timezone is not a known IANA time zone: {name!r}") from None


def _check_sqlalchemy_url(key: str, url: str) -> None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{key} is not a valid database URL: {redact_url(url)!r}") from None
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise ConfigError(f"{key} must be a sqlite:// or postgresql:// URL, got {parsed.get_backend_name()!r}")


# The longest a setting in each unit may be: past these a unit was taken for another, and a huge value
# overflows the date arithmetic it reaches (tiers.silent_days = 99999999999: OverflowError in every re-tier).
_LONGEST = {"_seconds": (MAX_SECONDS, "a day"), "_minutes": (525_600, "a year"), "_hours": (87_600, "ten years"),
            "_days": (36_500, "a hundred years")}
MAX_INT = 2**31 - 1  # a count or a limit past this is a typo, and past 2**63 no database column holds it


def _check_durations(settings: Settings) -> None:
    """Every ``*_seconds`` setting is a timeout, a wait or a period: more than a day is a mistake (a unit
    taken for another), and a huge one overflows the sleeps and lock waits it is given to. Minutes, hours
    and days have their own bounds; any other whole number is at most 2**31 - 1."""
    for section in _section_types():
        values = getattr(settings, section)
        for f in fields(values):
            value = getattr(values, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            unit = next((u for u in _LONGEST if f.name.endswith(u)), None)
            longest, said = _LONGEST[unit] if unit else (MAX_INT, "")
            if abs(value) > longest:
                raise ConfigError(f"{section}.{f.name} must be at most {longest}{f' ({said})' if said else ''}, "
                                  f"got {value!r}")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:  # written so that a NaN, which compares false with everything, fails too
        raise ConfigError(f"{key} must be greater than 0, got {value!r}")


# ---------------------------------------------------------------- logging


# Short-lived credentials have no configured value to match, so they are masked by name in URLs.
_CREDENTIAL_PARAM = re.compile(r"\b(access_token|corpsecret|jsapi_ticket|ticket|code)=[^&\s\"']+")


class SecretRedactingFilter(logging.Filter):
    """Replace every configured secret value in a log record with ``***``, and mask the personal data
    that can be recognised (:func:`bot.core.privacy.mask_personal_data`)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = self._scrub(record.getMessage())
        record.msg, record.args = message, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return mask_personal_data(_CREDENTIAL_PARAM.sub(r"\1=***", text))


def install_secret_redaction(settings: Settings, level: str | None = None) -> None:
    """Configure logging once (to stderr) at ``level`` (default: app.log_level, else INFO) and scrub
    this app's secrets and recognisable personal data from every handler's output."""
    level = (level or settings.app.log_level or DEFAULT_LOG_LEVEL).upper()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # stream: stderr
    root.setLevel(level)
    if level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    secrets = settings.secret_values()
    for handler in root.handlers:
        existing = next((f for f in handler.filters if isinstance(f, SecretRedactingFilter)), None)
        if existing:
            existing.secrets = sorted(set(existing.secrets) | secrets, key=len, reverse=True)
        else:
            handler.addFilter(SecretRedactingFilter(secrets))
