"""``edumatrix``: serve, migrate, seed-demo, consume, token, subscribe."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from api.settings import Settings
from streams.acl import Role


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        ]
        sys.exit("edumatrix: invalid configuration:\n" + "\n".join(lines))


def _ws_protocol(settings: Settings) -> str:
    """The uvicorn WebSocket protocol: ours if its fast path is on, else uvicorn's
    websockets-sansio, else whatever uvicorn picks itself."""
    if "wsprotocol" in settings.decide_fast_paths():
        return "api.wsprotocol:LeanWebSocketProtocol"
    try:
        import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
    except ImportError:
        return "auto"
    return "websockets-sansio"


def cmd_serve(args: argparse.Namespace) -> None:
    import structlog
    import uvicorn

    from api.logs import configure_logging

    settings = _settings()  # fail here, with a readable message, not in each worker
    problem = settings.exposure_problem(args.host)
    if problem is not None:
        sys.exit(f"edumatrix serve: {problem}")
    certfile, keyfile = _tls_files(args, settings)
    configure_logging(settings)  # the supervisor's own lines (--workers) look the same
    scheme = "https" if certfile else "http"
    structlog.get_logger("api.cli").info(
        "server.serving",
        url=f"{scheme}://{args.host}:{args.port}",
        mode=settings.mode.value,
        graphiql=f"{scheme}://{args.host}:{args.port}/graphql",
        tls=bool(certfile),
    )
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        # uvicorn's records go to the root handler api.logs installs (JSON lines in
        # cluster mode), not to uvicorn's own colourised handlers.
        log_config=None,
        access_log=settings.access_log,
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is ours to read (api/clientinfo.py, EDUMATRIX_TRUSTED_PROXIES):
        # uvicorn's own handling, on by default, trusts 127.0.0.1 and rewrites the
        # client address before the app sees the real peer.
        proxy_headers=False,
        # uvicorn's websockets-sansio protocol, with lighter per-connection state
        # when the wsprotocol fast path is on (api/wsprotocol.py). The multiplexer
        # writes frames straight to its transport (api/rawsocket.py); with another
        # protocol it uses ASGI send.
        ws=_ws_protocol(settings),
        ws_ping_interval=20,
        ws_ping_timeout=20,
        # Off by default, as in Centrifugo: with fan-out, deflate runs once per frame
        # per subscriber; it was 23% of server CPU at saturation with browsers' offer.
        ws_per_message_deflate=settings.ws_compression,
        # One bound for what a client may send in one piece: an HTTP body or a
        # WebSocket message (uvicorn's default for the latter was 16 MiB).
        ws_max_size=settings.max_body_bytes,
        # HTTPS and WSS on the same port; None serves plain HTTP.
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
    )


def _tls_files(args: argparse.Namespace, settings: Settings) -> tuple[str | None, str | None]:
    """Certificate and key (flags over settings), loaded once here so that a wrong
    path or a key that does not match its certificate stops ``serve`` with one line
    instead of a traceback from every uvicorn worker."""
    import ssl

    certfile = args.ssl_certfile or settings.ssl_certfile
    keyfile = args.ssl_keyfile or settings.ssl_keyfile
    if certfile is None:
        if keyfile is not None:
            sys.exit("edumatrix serve: --ssl-keyfile needs --ssl-certfile")
        return None, None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        sys.exit(f"edumatrix serve: cannot use TLS certificate {certfile} / key {keyfile}: {exc}")
    return str(certfile), str(keyfile) if keyfile is not None else None


def cmd_migrate(args: argparse.Namespace) -> None:
    from db.migrate import upgrade

    settings = _settings()
    upgrade(settings.resolved_database_url, args.revision)
    print(f"edumatrix: database migrated to {args.revision}", file=sys.stderr)


def cmd_seed_demo(args: argparse.Namespace) -> None:
    from db.engine import create_engine, make_sessionmaker
    from db.seed import seed_demo

    settings = _settings()

    async def run() -> int:
        engine = create_engine(settings.resolved_database_url)
        try:
            return await seed_demo(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    count = asyncio.run(run())
    print(f"edumatrix: demo data in place ({count} users)", file=sys.stderr)


def cmd_consume(args: argparse.Namespace) -> None:
    from api.consume import consume

    asyncio.run(consume(_settings(), metrics_port=args.metrics_port))


def cmd_token(args: argparse.Namespace) -> None:
    from api.auth import AuthError, TokenService

    tokens, _generated = TokenService.from_settings(_settings())
    try:
        token = tokens.mint(
            sub=args.sub,
            role=Role(args.role),
            institution=args.institution,
            departments=args.department,
            classrooms=args.classroom,
            ttl_seconds=args.ttl,
        )
    except AuthError as exc:
        sys.exit(f"edumatrix token: {exc.reason}")
    print(token)


SUBSCRIBE_DOCUMENT = """subscription($name: String!, $since: PositionInput) {
  channel(name: $name, since: $since) {
    offset epoch channel kind publishedAt recovered
    announcement { id title body priority authorId createdAt }
  }
}"""


def cmd_subscribe(args: argparse.Namespace) -> None:
    """A real graphql-transport-ws client: handy for the tour and for operators."""
    import json

    import websockets

    since = {"offset": args.since_offset, "epoch": args.since_epoch} if args.since_epoch else None

    async def run() -> None:
        async with websockets.connect(args.url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(
                json.dumps(
                    {
                        "type": "connection_init",
                        "payload": {"authorization": f"Bearer {args.token}"},
                    }
                )
            )
            variables = {"name": args.channel, "since": since}
            await ws.send(
                json.dumps(
                    {
                        "id": "1",
                        "type": "subscribe",
                        "payload": {"query": SUBSCRIBE_DOCUMENT, "variables": variables},
                    }
                )
            )
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif message["type"] == "next":
                    payload = message["payload"]
                    if payload.get("errors"):
                        sys.exit(f"edumatrix subscribe: {payload['errors'][0]['message']}")
                    print(json.dumps(payload["data"]["channel"]), flush=True)
                elif message["type"] in ("error", "complete"):
                    sys.exit(f"edumatrix subscribe: {message.get('payload') or 'completed'}")

    try:
        asyncio.run(run())
    except websockets.ConnectionClosed as exc:
        sys.exit(
            f"edumatrix subscribe: connection closed {exc.rcvd.code if exc.rcvd else ''} "
            f"{exc.rcvd.reason if exc.rcvd else ''}"
        )
    except KeyboardInterrupt:
        pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edumatrix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the GraphQL server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (needs Redis)")
    serve.add_argument(
        "--ssl-certfile", help="PEM certificate: serve HTTPS and WSS (EDUMATRIX_SSL_CERTFILE)"
    )
    serve.add_argument(
        "--ssl-keyfile", help="PEM private key of the certificate (EDUMATRIX_SSL_KEYFILE)"
    )
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database schema (Alembic)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)

    seed = sub.add_parser("seed-demo", help="insert the demo institutions and users")
    seed.set_defaults(func=cmd_seed_demo)

    consume = sub.add_parser("consume", help="aggregate Kafka events (one group member)")
    consume.add_argument("--metrics-port", type=int, help="serve Prometheus metrics here")
    consume.set_defaults(func=cmd_consume)

    token = sub.add_parser("token", help="mint a JWT and print it")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--institution", required=True)
    token.add_argument("--department", action="append", default=[])
    token.add_argument("--classroom", action="append", default=[])
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    listen = sub.add_parser("subscribe", help="print a channel's events as JSON lines")
    listen.add_argument("channel")
    listen.add_argument("--token", required=True)
    listen.add_argument("--url", default="ws://127.0.0.1:8000/graphql")
    listen.add_argument("--since-offset", type=int, default=0)
    listen.add_argument("--since-epoch", help="resume after --since-offset in this epoch")
    listen.set_defaults(func=cmd_subscribe)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if getattr(args, "workers", 1) > 1:
        settings = _settings()
        if not settings.redis_url:
            sys.exit("edumatrix serve: --workers > 1 needs EDUMATRIX_REDIS_URL (a shared bus)")
    args.func(args)


if __name__ == "__main__":
    main()
