"""The durable callback inbox: keys and decryption, the store (deduplicated), the dispatcher, the
processor and the worker. Knows nothing of Flask: the webhook view in ``bot.web.webhook`` feeds it."""
