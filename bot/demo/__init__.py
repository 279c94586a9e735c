"""``scrm demo``: a demo brand on SQLite talking to the local WeCom sandbox."""
