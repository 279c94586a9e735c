"""WeCom API client: wechatpy's ``WeChatClient`` with a configurable base URL (the sandbox or the
real host), per-secret token caching, one token refresh on 40001/40014/42001, short retries on -1/45033,
and none on 45009 (WeCom then blocks the API for a minute: the caller reschedules)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from wechatpy.exceptions import WeChatClientException
from wechatpy.session import SessionStorage
from wechatpy.session.memorystorage import MemoryStorage
from wechatpy.session.redisstorage import RedisStorage
from wechatpy.work import WeChatClient

from bot.core.config import Settings
from bot.wecom.api import ScrmExternalContact, ScrmJSAPI, ScrmKF, ScrmMoment, ScrmOAuth
from bot.wecom.handover import ScrmContactWay, ScrmTransfer
from bot.wecom.ratelimit import REDIS_RETRY_SECONDS, LocalBuckets, RateLimiter, RedisBuckets, api_path

logger = logging.getLogger(__name__)

# Invalid / expired access_token: refresh once. 40001 is documented for a bad secret at gettoken, but
# wechatpy and some gateways answer it for a stale token too; a refresh costs one gettoken.
TOKEN_ERRORS = frozenset({40001, 40014, 42001})
BUSY_ERRORS = frozenset({45033, -1})  # too many concurrent calls, system busy: retried here after a pause
SYSTEM_BUSY = -1  # unlike 45033 (refused before anything was done), it may come after WeCom did the call
# Calls that create something: a "system busy" may come after WeCom made it, so a blind retry could make
# two (two mass-message tasks to confirm, two QR codes). The mass-message senders look the outcome up;
# the others report it and leave the look-up to a sync (`scrm channels sync`). (message/send goes out
# with WeCom's duplicate check on; kf and welcome sends are single-use by their msgid and code.) A
# hand-over or a new tag retried after WeCom acted is refused (40129, 90508, 40071) as if it had failed:
# hand-overs stay waiting for the result poll instead.
NOT_RETRIED_WHEN_BUSY = frozenset({
    "externalcontact/add_msg_template", "externalcontact/add_contact_way",
    "externalcontact/add_moment_task", "externalcontact/group_welcome_template/add",
    "externalcontact/groupchat/add_join_way", "externalcontact/remind_groupmsg_send",
    "externalcontact/transfer_customer", "externalcontact/resigned/transfer_customer",
    "externalcontact/groupchat/transfer", "externalcontact/add_corp_tag",
})
# Over an API's per-minute limit: WeCom blocks that API for 60 s (WECOM.md §9, "1分钟后自动解除"), so a
# retry within the minute is refused again and only holds the thread (a welcome's 20 s pass meanwhile).
RATE_LIMITED = 45009
RATE_LIMIT_BLOCK_SECONDS = 60.0


class ApiBlocked(WeChatClientException):
    """WeCom refused the call for its frequency limit (45009); try again after ``retry_after`` seconds."""

    retry_after = RATE_LIMIT_BLOCK_SECONDS


class TokenFetchFailed(WeChatClientException):
    """gettoken itself was refused (a wrong or rotated secret: 40001), after its own busy retries: no
    refresh or retry of the call that needed the token helps, and each extra gettoken counts towards
    WeCom's block on repeated bad gettoken calls (WECOM.md §9)."""


class WeComClient(WeChatClient):
    external_contact = ScrmExternalContact()
    kf = ScrmKF()
    moment = ScrmMoment()
    oauth = ScrmOAuth()
    jsapi = ScrmJSAPI()
    contact_way = ScrmContactWay()
    transfer = ScrmTransfer()

    def __init__(
        self,
        corp_id: str,
        secret: str,
        *,
        api_base_url: str,
        session: SessionStorage | None = None,
        timeout: float = 10.0,
        busy_retries: int = 3,
        busy_backoff_seconds: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        limiter: RateLimiter | None = None,
    ) -> None:
        # Our own retry loop below replaces wechatpy's auto_retry, which recurses without bound.
        super().__init__(corp_id, secret, session=session, timeout=timeout, auto_retry=False)
        self.API_BASE_URL = api_base_url
        self.busy_retries = busy_retries
        self.busy_backoff_seconds = busy_backoff_seconds
        self._sleep = sleep
        self.limiter = limiter

    @property
    def _secret_id(self) -> str:
        # Never put (part of) the secret itself in a cache key: Redis keys are readable.
        return hashlib.sha256(self.secret.encode()).hexdigest()[:16]

    @property
    def access_token_key(self) -> str:
        return f"{self.corp_id}_{self._secret_id}_access_token"

    @property
    def access_token_expires_at_key(self) -> str:
        # wechatpy keys this by corp id only, so two apps of one corp would share it.
        return f"{self.corp_id}_{self._secret_id}_access_token_expires_at"

    def fetch_access_token(self) -> dict:
        """gettoken with the client's timeout (wechatpy's fetch has none: a stalled one held a worker thread
        for good) and the busy retries of any other call."""
        attempt = 0
        while True:
            try:
                return self._fetch_token_once()
            except WeChatClientException as exc:
                if exc.errcode not in BUSY_ERRORS or attempt >= self.busy_retries:
                    raise
                delay = self.busy_backoff_seconds * (2**attempt)
                attempt += 1
                logger.warning("WeCom gettoken answered %s; retry %d in %.1fs", exc.errcode, attempt, delay)
                self._sleep(delay)

    def _fetch_token_once(self) -> dict:
        logger.info("Fetching a WeCom access token")
        answer = self._http.get(url=f"{self.API_BASE_URL}gettoken", timeout=self.timeout,
                                params={"corpid": self.corp_id, "corpsecret": self.secret})
        try:
            answer.raise_for_status()
        except requests.RequestException as exc:
            raise WeChatClientException(None, None, client=self, request=exc.request, response=exc.response) from None
        result = answer.json()
        if result.get("errcode"):
            raise TokenFetchFailed(result["errcode"], result.get("errmsg"), client=self, request=answer.request,
                                   response=answer)
        expires_in = int(result.get("expires_in") or 7200)
        self.session.set(self.access_token_key, result["access_token"], expires_in)
        self.expires_at = int(time.time()) + expires_in
        return result

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        refreshed = False
        busy_attempt = 0
        while True:
            attempt_kwargs = dict(kwargs)
            if isinstance(kwargs.get("params"), dict):
                attempt_kwargs["params"] = {k: v for k, v in kwargs["params"].items() if k != "access_token"}
            if self.limiter is not None:
                self.limiter.acquire(api_path(url_or_endpoint, self.API_BASE_URL))
            try:
                return super()._request(method, url_or_endpoint, **attempt_kwargs)
            except TokenFetchFailed:
                raise
            except WeChatClientException as exc:
                if exc.errcode in TOKEN_ERRORS and not refreshed:
                    logger.info("WeCom access token rejected (%s); fetching a new one", exc.errcode)
                    self.session.delete(self.access_token_key)
                    self.fetch_access_token()
                    refreshed = True
                    continue
                if exc.errcode == RATE_LIMITED:
                    logger.warning("WeCom %s answered 45009 (over its per-minute limit); not retried for %.0fs",
                                   api_path(url_or_endpoint, self.API_BASE_URL), RATE_LIMIT_BLOCK_SECONDS)
                    raise ApiBlocked(exc.errcode, exc.errmsg, exc.client, exc.request, exc.response) from exc
                if exc.errcode in BUSY_ERRORS and busy_attempt < self.busy_retries and not (
                        exc.errcode == SYSTEM_BUSY
                        and api_path(url_or_endpoint, self.API_BASE_URL) in NOT_RETRIED_WHEN_BUSY):
                    delay = self.busy_backoff_seconds * (2**busy_attempt)
                    busy_attempt += 1
                    logger.warning("WeCom %s answered %s; retry %d in %.1fs", url_or_endpoint, exc.errcode,
                                   busy_attempt, delay)
                    self._sleep(delay)
                    continue
                raise


@dataclass
class WeComClients:
    """One client per app role. WeCom gives each app its own secret and token:
    the self-built app (app messages, OAuth, JS-SDK tickets), customer contact
    (externalcontact/*) and 微信客服 (kf/*)."""

    app: WeComClient
    contact: WeComClient
    kf: WeComClient


class RedisOrMemoryStorage(SessionStorage):
    """Access tokens and tickets in Redis (one per corp app for every process), and in this process's
    memory while Redis does not answer: a WeCom call never fails for Redis being away (a token fetched
    meanwhile is one more valid token; WeCom allows several)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.redis = client
        self.shared, self.own = RedisStorage(client, prefix=prefix), MemoryStorage()
        self._retry_at = 0.0

    def _try(self, action: Callable[[SessionStorage], Any]) -> Any:
        from redis.exceptions import RedisError

        if time.monotonic() < self._retry_at:  # not a timeout per call while Redis is away
            return action(self.own)
        try:
            return action(self.shared)
        except RedisError as exc:
            logger.warning("WeCom token cache: Redis unreachable (%s); this process keeps its own for %.0fs",
                           type(exc).__name__, REDIS_RETRY_SECONDS)
            self._retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            return action(self.own)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._try(lambda store: store.get(key))
        return default if value is None else value

    def set(self, key: str, value: Any, ttl: int | None = None) -> None:
        self.own.set(key, value, ttl)
        self._try(lambda store: store.set(key, value, ttl))

    def delete(self, key: str) -> None:
        self.own.delete(key)
        self._try(lambda store: store.delete(key))


def connect_redis(url: str) -> Any:
    """A client that gives up within a second: a call must not hang on a Redis that stopped answering."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)


def session_storage(settings: Settings) -> SessionStorage:
    if settings.redis.url:
        return RedisOrMemoryStorage(connect_redis(settings.redis.url), prefix=f"{settings.redis.key_prefix}:wecom")
    return MemoryStorage()


def rate_limiter(settings: Settings, sleep: Callable[[float], None] = time.sleep,
                 redis_client: Any = None) -> RateLimiter:
    """Per-API token buckets: in Redis (shared by every process) when configured, else in memory."""
    per_minute, per_hour = settings.wecom.rate_limit_per_minute, settings.wecom.rate_limit_per_hour
    if settings.redis.url:
        if redis_client is None:
            redis_client = connect_redis(settings.redis.url)
        prefix = f"{settings.redis.key_prefix}:ratelimit:{settings.wecom.corp_id}"
        return RedisBuckets(redis_client, per_minute, prefix, sleep=sleep, per_hour=per_hour)
    return LocalBuckets(per_minute, sleep=sleep, per_hour=per_hour)


def build_clients(settings: Settings, session: SessionStorage | None = None,
                  sleep: Callable[[float], None] = time.sleep, limiter: RateLimiter | None = None) -> WeComClients:
    w = settings.wecom
    storage = session or session_storage(settings)
    limiter = limiter or rate_limiter(settings, sleep, getattr(storage, "redis", None))  # one Redis connection

    def client(secret: str) -> WeComClient:
        made = WeComClient(
            w.corp_id,
            secret,
            api_base_url=w.api_base_url,
            session=storage,
            timeout=w.timeout_seconds,
            busy_retries=w.busy_retries,
            busy_backoff_seconds=w.busy_backoff_seconds,
            sleep=sleep,
            limiter=limiter,
        )
        made.jsapi.refresh_margin = settings.sidebar.ticket_refresh_margin_seconds
        return made

    app = client(w.secret)
    contact = client(w.contact_secret) if w.contact_secret and w.contact_secret != w.secret else app
    kf = client(w.kf_secret) if w.kf_secret and w.kf_secret != w.secret else app
    return WeComClients(app=app, contact=contact, kf=kf)
