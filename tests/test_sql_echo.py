"""``database.echo = true``: the SQL goes to the log (stderr, parameters hidden), never into a command's
output, so ``TOKEN=$(scrm token create shop)`` still captures the token alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_with_sql_echo_on_stdout_holds_only_the_commands_output(database_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCRM_")}
    env.update(SCRM_DATABASE_URL=database_url, SCRM_DATABASE_ECHO="true",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-m", "bot.cli", "token", "create", "shop"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert run.stdout == f"{token}\n" and token.startswith("scrm_"), run.stdout
    assert "INFO sqlalchemy.engine" in run.stderr and "INSERT INTO api_tokens" in run.stderr  # echo was on
    assert "[SQL parameters hidden due to hide_parameters=True]" in run.stderr
    assert token not in run.stderr
