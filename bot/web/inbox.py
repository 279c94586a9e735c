"""Wires the inbox: keyring, WeCom clients, dispatcher with every handler, processor, worker."""

from __future__ import annotations

import logging

from flask import Flask

import handlers
from bot.core.config import Settings
from bot.core.db import Database
from bot.inbox.crypto import Keyring
from bot.inbox.dispatcher import Dispatcher
from bot.inbox.processor import InboxProcessor
from bot.inbox.worker import InboxWorker
from bot.outbox import OutboxSender
from bot.startup import RuleReloader
from bot.tasks.queue import TaskQueue, connect
from bot.web import webhook
from bot.wecom.client import WeComClients, build_clients

logger = logging.getLogger(__name__)


def build_dispatcher() -> Dispatcher:
    dispatcher = Dispatcher()
    handlers.register_all(dispatcher)
    return dispatcher


def build_processor(settings: Settings, db: Database, clients: WeComClients | None = None) -> InboxProcessor:
    if clients is None and settings.wecom.corp_id:
        clients = build_clients(settings)
    sender = OutboxSender(db, clients, settings)
    return InboxProcessor(db, build_dispatcher(), settings, clients=clients, sender=sender,
                          rules=RuleReloader(db, settings).refresh)


def init_app(app: Flask, settings: Settings, db: Database, start_worker: bool | None = None) -> None:
    app.extensions["scrm.keyring"] = Keyring.from_settings(settings.wecom)
    processor = build_processor(settings, db)
    app.extensions["scrm.processor"] = processor
    webhook.install(app)
    if settings.redis.url:
        # RQ workers (`scrm worker`) take each stored event from the queue; see bot/tasks.
        app.extensions["scrm.tasks"] = TaskQueue(connect(settings.redis.url), settings.redis.key_prefix)
    if not settings.wecom.token:
        logger.warning("wecom.token is not set: /wecom/callback will refuse every request (503)")
    run_worker = settings.worker.enabled if start_worker is None else start_worker
    if run_worker:
        worker = InboxWorker(processor, settings.worker.poll_seconds, sender=processor.sender,
                             threads=settings.worker.threads)
        worker.start()
        app.extensions["scrm.worker"] = worker
