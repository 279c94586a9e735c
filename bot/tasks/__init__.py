"""RQ execution of the inbox and the outbox when ``redis.url`` is set: the webhook enqueues a stored
event's id, ``scrm worker`` runs an RQ worker whose jobs claim the row in the database exactly as the
in-process worker does (so a job that runs twice, or races an in-process worker, does nothing the
second time), and a sweep re-enqueues rows whose job was lost. Redis carries ids only; the database
rows stay the source of truth. Without Redis nothing here runs."""
