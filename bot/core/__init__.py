"""The ground floor: settings (defaults → TOML → env → overrides) and their own checks, the database
engine, sessions and migrations, the clock and how times are shown. Imports nothing from ``bot`` but ``bot.models``."""
