"""``edumatrix``: serve, migrate, seed-demo, token."""

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


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = _settings()  # fail here, with a readable message, not in each worker
    print(
        f"edumatrix: serving ({settings.mode.value} mode) on http://{args.host}:{args.port} "
        f"- GraphiQL at /graphql",
        file=sys.stderr,
    )
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        ws_ping_interval=20,
        ws_ping_timeout=20,
    )


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edumatrix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the GraphQL server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="server processes (needs Redis)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="upgrade the database schema (Alembic)")
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(func=cmd_migrate)

    seed = sub.add_parser("seed-demo", help="insert the demo institutions and users")
    seed.set_defaults(func=cmd_seed_demo)

    token = sub.add_parser("token", help="mint a JWT and print it")
    token.add_argument("--sub", required=True, help="user id")
    token.add_argument("--role", required=True, choices=[r.value for r in Role])
    token.add_argument("--institution", required=True)
    token.add_argument("--department", action="append", default=[])
    token.add_argument("--classroom", action="append", default=[])
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)
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
