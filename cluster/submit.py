"""Submit a study as a Ray job: `ray job submit ... -- python launch.py --theme-id N`.

    python cluster/submit.py --theme-id 7 [--study-name NAME] [--configs DIR] [--no-wait]
                             [--address http://127.0.0.1:8265] [-- more launch.py args]

What it adds to a bare `ray job submit`:
  - a submission id that names the theme and the study, as the dashboard's Jobs page
    and `ray job list` show it: themetune-theme7-<study>-<YYYYmmdd-HHMMSS>;
  - cluster/runtime_env.yaml (what is uploaded, RAY_JOB_STOP_WAIT_TIME_S), plus
    DATABASE_URL, MLFLOW_TRACKING_URI and MEDIA_ROOT from this shell as absolute
    values (default: the SQLite files and media folder of this checkout, which the
    driver reaches only when it runs on this machine, i.e. the head node);
  - a check that a token is there for Ray's token authentication.
It prints the `ray job submit` command, then runs it (--print-only: only prints it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RUNTIME_ENV = REPO / "cluster" / "runtime_env.yaml"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="cluster/submit.py", description=__doc__.split("\n")[0])
    p.add_argument("--theme-id", type=int, required=True)
    p.add_argument("--study-name", help="Optuna study name (default: study.name in the configs)")
    p.add_argument("--configs", help="configs folder as the head node sees it, or relative "
                                     "to the repository (default: configs)")
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265",
                   help="the cluster's job API, its dashboard address (default: RAY_ADDRESS)")
    p.add_argument("--submission-id", help="default: themetune-theme<N>-<study>-<time>")
    p.add_argument("--working-dir", default=str(REPO), help="default: this repository")
    p.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    p.add_argument("--print-only", action="store_true", help="print the command, run nothing")
    return p.parse_args(argv), extra


def study_name(args: argparse.Namespace) -> str:
    if args.study_name:
        return args.study_name
    folder = Path(args.configs) if args.configs else REPO / "configs"
    if not folder.is_absolute():
        folder = REPO / folder
    path = folder / "optuna_params.yaml"
    # Only a label for the job id: a file the driver will refuse (too large, too deep,
    # a non-text name) gets the plain label, and the driver says what is wrong with it.
    try:
        if path.stat().st_size > 1024 * 1024:
            return "study"
        name = (yaml.safe_load(path.read_text()) or {})["study"]["name"]
    except (OSError, KeyError, TypeError, RecursionError, yaml.YAMLError):
        return "study"
    return name if isinstance(name, str) and len(name) <= 200 else "study"


def submission_id(theme_id: int, study: str, now: dt.datetime | None = None) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", study).strip("-")[:60] or "study"
    return f"themetune-theme{theme_id}-{safe}-{(now or dt.datetime.now()):%Y%m%d-%H%M%S}"


def _absolute_sqlite(url: str) -> str:
    """sqlite:///relative.db resolves against the job's copy of working_dir, which is
    discarded after the job: make it absolute against this checkout."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str((REPO / url[len(prefix):]).resolve())
    return url


def runtime_env(working_dir: str) -> dict:
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    env["working_dir"] = working_dir
    env_vars = {k: str(v) for k, v in (env.get("env_vars") or {}).items()}
    env_vars["DATABASE_URL"] = _absolute_sqlite(
        os.environ.get("DATABASE_URL") or f"sqlite:///{REPO / 'db.sqlite3'}")
    env_vars["MLFLOW_TRACKING_URI"] = _absolute_sqlite(
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}")
    env_vars["MEDIA_ROOT"] = str(Path(os.environ.get("MEDIA_ROOT") or REPO / "media").resolve())
    env["env_vars"] = env_vars
    return env


def with_submission_id(env: dict, sid: str) -> dict:
    # launch.py records it with the study (the web UI finds the job by it).
    return {**env, "env_vars": {**env["env_vars"], "RAY_JOB_SUBMISSION_ID": sid}}


def token_available() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def build_command(args: argparse.Namespace, extra: list[str]) -> tuple[list[str], str]:
    study = study_name(args)
    sid = args.submission_id or submission_id(args.theme_id, study)
    entry = ["python", "launch.py", "--theme-id", str(args.theme_id)]
    if args.configs:
        entry += ["--configs", args.configs]
    if args.study_name:
        entry += ["--study-name", args.study_name]
    entry += extra
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "job", "submit", "--address", args.address, "--submission-id", sid,
           "--working-dir", args.working_dir,
           "--runtime-env-json", json.dumps(with_submission_id(runtime_env(args.working_dir), sid)),
           "--metadata-json", json.dumps({"theme_id": str(args.theme_id), "study_name": study}),
           *(["--no-wait"] if args.no_wait else []), "--", *entry]
    return cmd, sid


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    # Ray's token auth is on for our clusters: the client needs the mode and the token.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] == "token" and not token_available():
        print("error: no Ray auth token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH, or copy "
              "the cluster's token to ~/.ray/auth_token (on the head: ray get-auth-token).",
              file=sys.stderr)
        return 2
    cmd, sid = build_command(args, extra)
    print(f"submission id: {sid}", flush=True)
    print(shlex.join(cmd), flush=True)
    if args.print_only:
        return 0
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
