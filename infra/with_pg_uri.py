"""Run a command with a PostgreSQL URI in one environment variable, its password URL-encoded.

    python infra/with_pg_uri.py MLFLOW_BACKEND_STORE_URI mlflow server ...

The URI is postgresql://USER:PASSWORD@HOST:PORT/DB from POSTGRES_USER, POSTGRES_PASSWORD,
POSTGRES_HOST, POSTGRES_PORT (default 5432) and POSTGRES_DB. User and password are encoded with
urllib.parse.quote(..., safe=""), so a password holding any of @ : / ? # % + or a space reaches
the server unchanged (SQLAlchemy's make_url decodes them). Pasting ${POSTGRES_PASSWORD} into the
URI instead breaks the URI or logs in with another password. The operator sets the plain password
once (compose: .env; Kubernetes: the seqrec-secrets Secret) and nothing else has to be kept in step
with it. The URI is only in the command's environment, never in its argv (ps).

The MLflow server reads --backend-store-uri from MLFLOW_BACKEND_STORE_URI. The Prefect server
needs no wrapper: it gets the separate PREFECT_SERVER_DATABASE_* settings and builds its URL
with SQLAlchemy, which encodes the password itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from urllib.parse import quote


def pg_uri(env: Mapping[str, str]) -> str:
    user = quote(env["POSTGRES_USER"], safe="")
    password = quote(env["POSTGRES_PASSWORD"], safe="")
    port = int(env.get("POSTGRES_PORT") or 5432)
    return f"postgresql://{user}:{password}@{env['POSTGRES_HOST']}:{port}/{quote(env['POSTGRES_DB'], safe='')}"


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: with_pg_uri.py VARIABLE COMMAND [ARG...]")
    try:
        os.environ[argv[1]] = pg_uri(os.environ)
    except KeyError as e:
        sys.exit(f"with_pg_uri.py: {e.args[0]} is not set")
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv)
