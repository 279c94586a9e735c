"""Pushes on the service's own initiative: audiences, tiered broadcasts, coupons, sequences,
tier-change actions, holiday greetings (solar and lunar calendar) and birthdays. Everything here
ends as outbox rows; the senders in bot/outbox deliver them."""
