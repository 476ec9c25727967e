"""`dicom-gateway serve [--host H] [--port P] [--env-file F] [--workers N]`: turn options into settings and run
uvicorn.

`--workers N` runs N gateway processes on one socket under uvicorn's supervisor, which restarts a worker that dies.
Each worker is a whole gateway, as a replica is: its own upstream pool, its own background work (callback
deliveries, the new-exam follower, the audit shipper), sharing the one database. Several replicas need PostgreSQL
(docs/operations.md), and so do several workers: with SQLite, `--workers` above 1 is refused.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.components import edge_limits
from gateway.edge.http import EdgeProtocol, protocol_for
from gateway.settings import Settings, SettingsError, load_settings

# How a worker process finds the --env-file its supervisor was given (workers are spawned, not forked).
_ENV_FILE_VARIABLE = "DICOM_GATEWAY_SERVE_ENV_FILE"
# After SIGTERM: stop accepting, let requests in flight finish for up to this long, then close what is left. The
# deployments' grace periods (deploy/) leave room for it.
DRAIN_TIMEOUT_S = 30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicom-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.add_argument("--env-file", type=Path, default=None, help="read settings from this file too")
    serve.add_argument("--workers", type=int, default=1,
                       help="gateway processes on the one socket (default 1; above 1 needs PostgreSQL)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.env_file)
    except SettingsError as exc:
        print(f"dicom-gateway: {exc}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("dicom-gateway: --workers must be 1 or more", file=sys.stderr)
        return 2
    if args.workers > 1 and not settings.database_url.startswith("postgresql"):
        print("dicom-gateway: --workers above 1 needs DATABASE_URL=postgresql://... (the workers share the stored "
              "events as replicas do, and SQLite is for one process)", file=sys.stderr)
        return 2
    # loop "auto" picks uvloop; http is httptools with the edge's limits on request heads (gateway.edge.http);
    # logging is ours (log_config=None).
    options = dict(host=args.host, port=args.port, loop="auto", log_config=None, proxy_headers=False,
                   server_header=False, timeout_graceful_shutdown=DRAIN_TIMEOUT_S)
    if args.workers == 1:
        uvicorn.run(_ready(settings), http=protocol_for(edge_limits(settings)), **options)
        return 0
    if args.env_file is not None:
        os.environ[_ENV_FILE_VARIABLE] = str(args.env_file.resolve())
    # Spawned workers get the app and the protocol by name; `worker_app` sets the protocol's limits, before any
    # connection is accepted.
    uvicorn.run("gateway.cli:worker_app", factory=True, http="gateway.cli:WorkerEdgeProtocol", workers=args.workers,
                **options)
    return 0


class WorkerEdgeProtocol(EdgeProtocol):
    """`EdgeProtocol` for `--workers` processes, importable by name; its `limits` come from `worker_app`."""


def worker_app() -> Starlette:
    """The app of one of `--workers`' processes: the settings read again, as the supervisor read them."""
    path = os.environ.get(_ENV_FILE_VARIABLE)
    settings = load_settings(Path(path) if path else None)
    WorkerEdgeProtocol.limits = edge_limits(settings)
    return _ready(settings)


def _ready(settings: Settings) -> Starlette:
    app = create_app(settings)
    # What the imports and the assembly made lives as long as the process: out of the collector's sight, so that a
    # full collection scans only what requests made (about 140k objects here, 70-120 ms per full collection else).
    gc.freeze()
    return app


if __name__ == "__main__":
    raise SystemExit(main())
