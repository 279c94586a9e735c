"""`scrm backup` and `scrm restore` of a big SQLite database, end to end as a user runs them, against `cp` of
the same file in the same run (the floor: a plain file copy, which is not a consistent backup of a live
database). Optionally with a writer committing all the while, to show what a live service costs the copy.

    python bench/backup.py --customers 2000000 [--with-writer]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

NAME = "客户名字"


def scrm(database: Path, *args: str) -> float:
    env = {**os.environ, "SCRM_DATABASE_URL": f"sqlite:///{database}", "SCRM_CONFIG": ""}
    env.pop("SCRM_CONFIG")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bot.cli", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def seed(database: Path, customers: int) -> None:
    scrm(database, "init")
    with closing(sqlite3.connect(database)) as conn, conn:
        conn.executemany(
            "INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, created_at, updated_at) "
            "VALUES (?, ?, 1, 0, 0, '2026-11-01 00:00:00', '2026-11-01 00:00:00')",
            ((f"wm{i:030d}", f"{NAME}{i}" * 6) for i in range(customers)))
    with closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
i = 0
while True:
    conn.execute("INSERT INTO customers (external_userid, name, contact_type, gender, opted_out, created_at, "
                 "updated_at) VALUES (?, 'w', 1, 0, 0, '2026-12-01 00:00:00', '2026-12-01 00:00:00')", (f"wmW{i:09d}",))
    i += 1
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=2_000_000)
    parser.add_argument("--with-writer", action="store_true", help="a process inserting rows during the backup")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scrm-bench-backup-") as folder:
        database = Path(folder) / "scrm.db"
        seed(database, args.customers)
        size = database.stat().st_size
        started = time.perf_counter()
        shutil.copyfile(database, Path(folder) / "cp.db")
        os.sync()
        copy_seconds = time.perf_counter() - started
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database)]) if args.with_writer else None
        try:
            backup_seconds = scrm(database, "backup", str(Path(folder) / "backup.db"), "--no-progress")
        finally:
            if writer is not None:
                writer.kill()
                writer.wait()
        restore_seconds = scrm(database, "restore", str(Path(folder) / "backup.db"), "--yes", "--no-progress")
    print(f"database: {args.customers:,} customers, {size / 1e6:,.0f} MB; load average {os.getloadavg()[0]:.1f}")
    print(f"cp (floor, not a consistent backup): {copy_seconds:.1f} s")
    writing = " (a writer committing meanwhile)" if args.with_writer else ""
    print(f"scrm backup{writing}: {backup_seconds:.1f} s ({backup_seconds / copy_seconds:.1f}× cp), "
          f"{size / 1e6 / backup_seconds:,.0f} MB/s, command start and checks included")
    print(f"scrm restore: {restore_seconds:.1f} s ({restore_seconds / copy_seconds:.1f}× cp)")


if __name__ == "__main__":
    main()
