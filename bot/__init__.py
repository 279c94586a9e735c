"""wecom-scrm-bot: the service shell around the tiering engine (``segments``) and the WeCom event
handlers (``handlers``). Each subpackage owns one concern; see docs/architecture.md for the rooms and
what each may import. Importing ``bot`` loads nothing: ``bot.web.app.create_app`` builds the app."""
