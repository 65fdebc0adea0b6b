"""A plain RQ worker for the raw side: the same class, serializer and Redis settings as
`flask worker` (webapp/cli.py), listening on one queue, nothing else loaded.

    python -m bench.rawworker --url redis://... --queue NAME --name NAME [--fork]
"""
from __future__ import annotations

import argparse


def main() -> None:
    from redis import Redis
    from rq import Queue, SimpleWorker, Worker
    from rq.serializers import JSONSerializer

    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--fork", action="store_true")
    args = parser.parse_args()
    conn = Redis.from_url(args.url, socket_connect_timeout=5, health_check_interval=30)
    worker_cls = Worker if args.fork else SimpleWorker
    worker = worker_cls([Queue(args.queue, connection=conn, serializer=JSONSerializer)], connection=conn,
                        serializer=JSONSerializer, name=args.name)
    worker.work(with_scheduler=True, logging_level="WARNING")


if __name__ == "__main__":
    main()
