"""The ground floor: settings (defaults → TOML → env → overrides) and their own checks, the database
engine, sessions and migrations, and the clock. Imports nothing from ``bot`` but ``bot.models``."""
