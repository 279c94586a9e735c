"""Pushes on the service's own initiative: audiences, tiered broadcasts, coupons, sequences and
tier-change actions. Everything here ends as outbox rows; the senders in bot/outbox deliver them."""
