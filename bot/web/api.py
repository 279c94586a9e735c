"""REST API (``/api/v1``): bearer tokens created with ``scrm token create``; orders in, customers (tiers,
scores, tags, predictions, why) out, coupons redeemed."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import HTTPException, InternalServerError

from bot.campaigns.audience import tier_choices
from bot.campaigns.rules import value_tier_names
from bot.core import jsonsafe
from bot.models import ApiToken, Customer
from bot.tagging.rules import TagRules
from bot.tagging.system import apply_aggregate_rules
from bot.web.live import current_settings
from bot.web.logpaths import logged_path
from segments.money import number_to_fen
from segments.orders import OrderRow, OrderWriter, RowError, parse_order

logger = logging.getLogger(__name__)
bp = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_ORDERS_PER_REQUEST = 10_000
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ECHOED_ID = 128
TOKEN_PREFIX = "scrm_"


def new_token() -> tuple[str, str]:
    """A fresh token and the digest that is stored (the token itself is shown once, never stored)."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> tuple[Response, int]:
    logger.info("API %s %s refused (%d): %s", request.method, logged_path(), exc.status, exc.message)
    return jsonify(error=exc.message), exc.status


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    # Registered on the app, not the blueprint: a blueprint never sees a 404/405 of routing.
    app.register_error_handler(HTTPException, _http_error)
    app.after_request(_headers)


def _headers(response: Response) -> Response:
    """Customers' names, tiers and orders: never kept by a browser or proxy cache, never read as anything but
    the JSON they are declared as. On the app for the same reason as the error handler."""
    if _is_api_path(request.path):
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _http_error(exc: HTTPException) -> HTTPException | tuple[Response, int]:
    """Under /api/v1 every error is JSON (Flask's own page is HTML); elsewhere Flask's page stays."""
    if not _is_api_path(request.path):
        return exc
    status = exc.code or 500
    if isinstance(exc, InternalServerError):
        message = "internal error; the server log has the details"  # Flask has logged the exception
    else:
        message = exc.description or exc.name
        logger.info("API %s %s refused (%d): %s", request.method, logged_path(), status, exc.name)
    response = jsonify(error=message)
    if status == 405 and isinstance(exc.valid_methods, list | tuple | set) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
    return response, status


def _is_api_path(path: str) -> bool:
    return path == bp.url_prefix or path.startswith(f"{bp.url_prefix}/")


def _now() -> datetime:
    return current_app.extensions["scrm.clock"]()


def _authenticate(session: Session) -> ApiToken:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
    digest = token_digest(token.strip())
    found = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == digest))
    if found is None or found.revoked_at is not None or not hmac.compare_digest(found.token_sha256, digest):
        raise ApiError(401, "invalid or revoked token")
    found.last_used_at = _now()
    return found


def _json_body() -> Any:
    """The request's JSON, or an ApiError: 413 when too large, 415 when not JSON, 400 when unparsable
    (including nesting too deep for the parser). Numbers are read as exact Decimals, so that a huge or
    non-finite amount is one row's error, not a failure of the whole body."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    if not request.is_json:
        raise ApiError(415, "body must be JSON (Content-Type: application/json)")
    body = request.stream.read(MAX_BODY_BYTES + 1)  # bounded even without a Content-Length (chunked)
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        return jsonsafe.loads(body, parse_float=Decimal, parse_int=Decimal, parse_constant=Decimal)
    except (RecursionError, jsonsafe.JsonTooDeep):
        raise ApiError(400, "body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(400, f"body is not valid JSON: {_first_line(str(exc))}") from None


def _first_line(text: str) -> str:
    return text.splitlines()[0][:200] if text else ""


def _orders_payload() -> list[Any]:
    payload = _json_body()
    if isinstance(payload, dict) and "orders" in payload:
        payload = payload["orders"]
    if not isinstance(payload, list):
        raise ApiError(400, "body must be a JSON list of orders (or {\"orders\": [...]})")
    if len(payload) > MAX_ORDERS_PER_REQUEST:
        raise ApiError(413, f"at most {MAX_ORDERS_PER_REQUEST} orders per request")
    return payload


@bp.post("/orders")
def post_orders() -> Response:
    """Each order: order_id, external_userid, amount (元), paid_at (ISO 8601; no offset = app.timezone), status.
    Answers one result per order, in order: inserted / updated / unchanged / skipped (with a reason: a
    forgotten customer's, which stays forgotten) / error."""
    settings = current_settings()
    db = current_app.extensions["scrm.db"]
    with db.begin() as session:
        _authenticate(session)
        payload = _orders_payload()
        results: list[dict[str, Any]] = []
        batch: dict[str, tuple[int, OrderRow]] = {}
        writer = OrderWriter(session)
        for index, item in enumerate(payload):
            try:
                if not isinstance(item, dict):
                    raise RowError("each order must be a JSON object")
                row = parse_order(item, settings.tz)
            except RowError as exc:
                results.append({"index": index, "order_id": _echoed_order_id(item), "result": "error",
                                "error": str(exc)})
                continue
            if row.order_id in batch:
                _flush(writer, batch, results)
            batch[row.order_id] = (index, row)
            results.append({"index": index, "order_id": row.order_id, "result": None})
        _flush(writer, batch, results)
        _apply_order_rules(session, settings, {item["external_userid"] for item in payload if isinstance(item, dict)
                                               and isinstance(item.get("external_userid"), str)})
    summary: dict[str, int] = {}
    for item in results:
        summary[item["result"]] = summary.get(item["result"], 0) + 1
    return jsonify(results=results, summary=summary)


def _echoed_order_id(item: Any) -> str | None:
    """The order id of a refused row, if it is text (anything else is not sent back)."""
    order_id = item.get("order_id") if isinstance(item, dict) else None
    return order_id[:MAX_ECHOED_ID] if isinstance(order_id, str) else None


def _apply_order_rules(session: Session, settings: Any, external_userids: set[str]) -> None:
    """Order-threshold tags (first order, repeat buyer, big spender) for the customers just written."""
    if not external_userids:
        return
    ids = list(session.scalars(select(Customer.id).where(Customer.external_userid.in_(external_userids))))
    if ids:
        apply_aggregate_rules(session, TagRules.from_settings(settings), settings.tags.push_to_wecom, ids)


def _flush(writer: OrderWriter, batch: dict[str, tuple[int, OrderRow]], results: list[dict[str, Any]]) -> None:
    if not batch:
        return
    outcome = writer.write([row for _, row in batch.values()], keep_outcomes=True)
    by_index = {index: row.order_id for index, row in batch.values()}
    for item in results:
        if item["result"] is None and item["index"] in by_index:
            order_id = by_index[item["index"]]
            item["result"] = outcome.outcomes[order_id]
            if order_id in outcome.reasons:  # skipped: a forgotten customer's (scrm customer forget)
                item["reason"] = outcome.reasons[order_id]
    batch.clear()


# The tier dimensions and the churn-risk band a customer list may be filtered on (exact values).
CUSTOMER_FILTERS = ("value_tier", "rfm_segment", "stage", "engagement", "activity", "churn_risk")
FILTER_CHOICES = {"value_tier": "value_tiers", "rfm_segment": "rfm_segments", "stage": "stages",
                  "engagement": "engagement", "activity": "activity", "churn_risk": "churn_risk"}
MAX_CUSTOMERS_PER_PAGE = 1000


@bp.get("/customers")
def list_customers() -> Response:
    """Customers in id order, ``limit`` (1–1000, default 100) at a time after id ``after``, optionally
    only those with the given ``value_tier`` / ``rfm_segment`` / ``stage`` / ``engagement`` / ``activity``
    / ``churn_risk``; ``next_after`` is the ``after`` of the next page (null at the end)."""
    from segments.export import customer_records

    db = current_app.extensions["scrm.db"]
    with db.begin() as session:
        _may_read_customers(_authenticate(session))  # first: no token, no word on the parameters
        where, after, limit = _customer_query()
        records = customer_records(session, where, after, limit, tz=current_settings().tz)
    return jsonify(customers=records, next_after=records[-1]["id"] if len(records) == limit else None)


def _customer_query() -> tuple[list[Any], int, int]:
    from bot.models import CustomerPrediction, CustomerTier

    unknown = sorted(set(request.args) - {*CUSTOMER_FILTERS, "after", "limit"})
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0]!r}; filters: {', '.join(CUSTOMER_FILTERS)}, after, limit")
    limit, after = _int_arg("limit", 100, 1, MAX_CUSTOMERS_PER_PAGE), _int_arg("after", 0, 0, 2**62)
    choices = tier_choices(value_tier_names(current_settings()))
    where = []
    for name in CUSTOMER_FILTERS:
        given = request.args.getlist(name)
        if not given:
            continue
        if len(given) > 1:
            raise ApiError(400, f"give {name} once")
        value, allowed = given[0], choices[FILTER_CHOICES[name]]
        if value not in allowed:
            raise ApiError(400, f"{name} {value[:32]!r} is not one of {', '.join(allowed)}")
        owner = CustomerPrediction if name == "churn_risk" else CustomerTier
        where.append(Customer.id.in_(select(owner.customer_id).where(getattr(owner, name) == value)))
    return where, after, limit


@bp.get("/customers/<path:external_userid>")
def get_customer(external_userid: str) -> Response:
    """One customer by external_userid: the list's fields and ``why``, each tier dimension's reason in
    Chinese (as the sidebar shows it) compared with the population of the last re-tier."""
    from segments.explain import explanation, stored_stats
    from segments.export import customer_records
    from segments.policy import TierPolicy

    if len(external_userid) > 128:
        raise ApiError(400, "external_userid is at most 128 characters")
    settings = current_settings()
    db = current_app.extensions["scrm.db"]
    with db.begin() as session:
        _may_read_customers(_authenticate(session))
        customer = session.scalar(select(Customer).where(Customer.external_userid == external_userid))
        if customer is None:
            raise ApiError(404, "no such customer")
        [record] = customer_records(session, [Customer.id == customer.id], customer.id - 1, 1, tz=settings.tz)
        as_of = _now().astimezone(settings.tz).date()
        why = explanation(session, customer, TierPolicy.of(settings), as_of, settings.tz,
                          stats=stored_stats(session))
        record["why"] = why.why_zh
    return jsonify(customer=record)


def _may_read_customers(token: ApiToken) -> None:
    if not token.read_customers:
        raise ApiError(403, f"token {token.name!r} may not read customers; create one with "
                            "`scrm token create NAME --read-customers`")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}")
    return int(text)


@bp.post("/coupons/redeem")
def redeem_coupon() -> tuple[Response, int]:
    """``{"code": "…", "order_id": "…"?, "amount": 元?}`` → 200 redeemed; 404 unknown code;
    409 already redeemed, expired or withdrawn (its message did not go out); 422 minimum spend not met or
    the order is someone else's."""
    from bot.campaigns.coupons import display_code, redeem

    settings = current_settings()
    db = current_app.extensions["scrm.db"]
    with db.begin() as session:
        _authenticate(session)  # before the body is read: a caller without a token gets 401, whatever it sent
        payload, order_id, amount_fen = _redeem_request()
        result = redeem(session, payload["code"], order_id=order_id, amount_fen=amount_fen, now=_now(),
                        tag_rules=TagRules.from_settings(settings), push_tags=settings.tags.push_to_wecom,
                        tz=settings.tz)
        coupon = result.coupon
        body = {"code": display_code(coupon.code), "definition": coupon.definition, "title": coupon.title,
                "status": coupon.status, "order_id": coupon.order_id} if coupon else None
    if result.ok:
        return jsonify(result="redeemed", coupon=body), 200
    status = 404 if coupon is None else 422 if any(
        words in result.reason for words in ("minimum", "another customer", "not paid")) else 409
    logger.info("coupon redemption refused (%d): %s", status, result.reason)
    return jsonify(result="refused", error=result.reason, coupon=body), status


def _redeem_request() -> tuple[dict[str, Any], str | None, int | None]:
    payload = _json_body()
    if not isinstance(payload, dict) or not isinstance(payload.get("code"), str) or len(payload["code"]) > 64:
        raise ApiError(400, "body must be a JSON object with a code")
    order_id = payload.get("order_id")
    if order_id is not None and (not isinstance(order_id, str) or not order_id.strip() or len(order_id) > 128):
        raise ApiError(400, "order_id must be a non-empty string of at most 128 characters")
    amount_fen = None
    if payload.get("amount") is not None:
        try:
            amount_fen = number_to_fen(payload["amount"])
        except (ValueError, TypeError):
            amount_fen = -1
        if isinstance(payload["amount"], bool) or not 0 <= amount_fen < 10**12:
            raise ApiError(400, "amount must be a number of 元 (0 to 10 billion) with at most two decimals")
    return payload, order_id, amount_fen
