"""A real PostgreSQL server for a test: its own cluster in a temp dir, on 127.0.0.1,
run as the `postgres` user (the server refuses root); stopped and started at will."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or \
        [p for p in [shutil.which(name)] if p]
    if not found:
        raise RuntimeError(f"no PostgreSQL {name}: run `make postgres` "
                           "(apt-get install postgresql)")
    return found[-1]


class PostgresServer:
    def __init__(self, port: int, *, user: str = "tuner", database: str = "themes"):
        self.port, self.user, self.database = port, user, database
        self.dir = Path(tempfile.mkdtemp(prefix="tt-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        self._run(_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", user,
                  "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        result = subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=120,
                                cwd=self.dir)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   f"-c fsync=off -c full_page_writes=off")
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        # fast: open connections are cut, as when a server goes down under its clients.
        self._run(_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')

    def remove(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass   # not running
        shutil.rmtree(self.dir, ignore_errors=True)
