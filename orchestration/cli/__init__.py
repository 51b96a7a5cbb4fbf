"""`pso`: the project's command line.

    pso run                       services + migrations + demo data + Dagster UI and daemon
    pso services start|stop|status
    pso migrate [--down]
    pso seed [--scale demo|bench|N] [--seed N] [--if-empty]
    pso bench CASE [--scale N]
    pso dagster ARGS…             the `dagster` CLI on this project's instance (DAGSTER_HOME and endpoints set)

The families' commands (explain, stats, restore-hour, letters, prune) are in `families.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys

import psutil

from orchestration.cli.environment import dagster_env, embedded_services_for, export_env
from orchestration.services import ServiceError
from orchestration.settings import PROJECT_ROOT, SettingsError, get_settings


def _services_start(settings) -> None:
    from orchestration.services import embedded_services

    if not settings.embedded and not settings.embedded_s3:
        print("PSO_DATABASE_URL and PSO_S3_ENDPOINT_URL are set: no embedded services to start")
        return
    postgres, s3 = embedded_services(settings)
    if settings.embedded:
        started = postgres.start()
        postgres.ensure_database("dagster")
        print(f"postgres  {'started' if started else 'already running'} on 127.0.0.1:{postgres.port} "
              f"(data in {postgres.pgdata})")
    if settings.embedded_s3:
        started = s3.start()
        print(f"s3        {'started' if started else 'already running'} at {s3.endpoint} (data in {s3.dir})")


def _services_stop(settings) -> None:
    from orchestration.services import embedded_services

    postgres, s3 = embedded_services(settings)
    print(f"s3        {'stopped' if s3.stop() else 'was not running'}")
    print(f"postgres  {'stopped' if postgres.stop() else 'was not running'}")


def _services_status(settings) -> int:
    from orchestration.services import embedded_services

    postgres, s3 = embedded_services(settings)
    pg_up, s3_up = postgres.is_running(), s3.is_running()
    print(f"postgres  {'running on 127.0.0.1:%d' % postgres.port if pg_up else 'stopped'}")
    print(f"s3        {'running at ' + s3.endpoint if s3_up else 'stopped'}")
    return 0 if pg_up and s3_up else 3


def _prepare(settings, seed_if_empty: bool = True, scale: str = "demo") -> None:
    """Migrate, create buckets, seed the demo data if the database is empty."""
    from orchestration.migrate import upgrade
    from orchestration.synthetic import database_is_empty, seed_all

    export_env(settings)
    settings = get_settings()
    upgrade(settings.database_url)
    print("schema    migrated to head")
    client = settings.s3_client()
    settings.ensure_buckets(client)
    if seed_if_empty and database_is_empty(settings.database_url):
        print(f"seeding   synthetic data (scale {scale})")
        seed_all(settings.database_url, scale=scale, s3=client, settings=settings)


def cmd_run(args) -> int:
    settings = get_settings()
    try:
        _services_start(settings)  # inside: a service that fails to start does not leave the other running
        return _prepare_and_serve(args)
    finally:
        if not args.keep_services:
            _services_stop(settings)


def _prepare_and_serve(args) -> int:
    _prepare(get_settings(), seed_if_empty=not args.no_seed)
    settings = get_settings()
    env = dagster_env(settings)
    _apply_pools(env)
    url = f"http://127.0.0.1:{settings.dagster_port}"
    workspace = str(PROJECT_ROOT / "workspace.yaml")
    bin_dir = os.path.dirname(sys.executable)
    print(f"dagster   starting webserver and daemon: open {url}  (Ctrl-C stops everything)", flush=True)
    # Each server runs in its own session (a Ctrl-C meant for us does not hit them half-way);
    # we stop both groups ourselves, whatever happens.
    servers: list[subprocess.Popen] = []

    def stop_servers(signum=None, _frame=None):
        for process in servers:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def descendants() -> list:
        found = []
        for process in servers:
            try:
                found += psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        return found

    signal.signal(signal.SIGINT, stop_servers)
    signal.signal(signal.SIGTERM, stop_servers)
    try:
        servers.append(subprocess.Popen(
            [os.path.join(bin_dir, "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1",
             "-p", str(settings.dagster_port)], env=env, cwd=PROJECT_ROOT, start_new_session=True))
        servers.append(subprocess.Popen([os.path.join(bin_dir, "dagster-daemon"), "run", "-w", workspace],
                                        env=env, cwd=PROJECT_ROOT, start_new_session=True))
        code = servers[0].wait()
    finally:
        children = descendants()  # code servers may sit in groups of their own
        stop_servers()
        for process in servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        psutil.wait_procs(children, timeout=10, callback=None)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    return 0 if code in (0, -signal.SIGTERM, 128 + signal.SIGTERM) else code


def _apply_pools(env: dict) -> None:
    """Set the concurrency pool limits in the instance (a short child process with DAGSTER_HOME)."""
    code = ("from dagster import DagsterInstance; from orchestration.instance import apply_pool_limits; "
            "apply_pool_limits(DagsterInstance.get())")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=PROJECT_ROOT)


def cmd_services(args) -> int:
    settings = get_settings()
    if args.action == "start":
        _services_start(settings)
    elif args.action == "stop":
        _services_stop(settings)
    else:
        return _services_status(settings)
    return 0


def cmd_migrate(args) -> int:
    from orchestration.migrate import downgrade, upgrade

    export_env(get_settings())
    url = get_settings().database_url
    if args.down:
        downgrade(url, args.revision or "base")
        print(f"schema    downgraded to {args.revision or 'base'}")
    else:
        upgrade(url, args.revision or "head")
        print(f"schema    upgraded to {args.revision or 'head'}")
    return 0


def cmd_seed(args) -> int:
    with embedded_services_for(get_settings(), "seed"):
        return _seed(args)


def _seed(args) -> int:
    from orchestration.migrate import upgrade
    from orchestration.synthetic import database_is_empty, seed_all

    export_env(get_settings())
    settings = get_settings()
    upgrade(settings.database_url)
    if args.if_empty and not database_is_empty(settings.database_url):
        print("seed      the database already has data; nothing loaded")
        return 0
    client = settings.s3_client()
    settings.ensure_buckets(client)
    seed_all(settings.database_url, scale=args.scale, seed=args.seed, s3=client, settings=settings)
    return 0


def cmd_bench(args) -> int:
    import importlib.util

    from bench.runner import run_case

    if importlib.util.find_spec(f"bench.{args.case}") is None:
        return run_case(args.case, args.scale, record=False)  # names the cases there are; starts nothing
    with embedded_services_for(get_settings(), "bench"):
        export_env(get_settings())
        return run_case(args.case, args.scale, record=not args.no_record)


def cmd_dagster(argv: list[str]) -> int:
    """`dagster ARGS…` with this project's DAGSTER_HOME and endpoints (embedded ones started if needed)."""
    with embedded_services_for(get_settings(), "dagster"):
        env = dagster_env(get_settings())
        dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
        try:
            return subprocess.run([dagster, *argv], env=env).returncode
        except KeyboardInterrupt:  # Ctrl-C reached `dagster` too (same process group); it has stopped
            return 130


CORE_COMMANDS = {"run", "services", "migrate", "seed", "bench", "dagster"}


def build_parser(include_families: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pso", description="public-service-orchestration")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start everything on the embedded default and open the Dagster UI")
    run.add_argument("--no-seed", action="store_true", help="do not load demo data into an empty database")
    run.add_argument("--keep-services", action="store_true", help="leave Postgres and S3 running on exit")
    run.set_defaults(func=cmd_run)

    services = sub.add_parser("services", help="the embedded Postgres and S3")
    services.add_argument("action", choices=["start", "stop", "status"])
    services.set_defaults(func=cmd_services)

    migrate = sub.add_parser("migrate", help="apply (or with --down, undo) the schema migrations")
    migrate.add_argument("--down", action="store_true")
    migrate.add_argument("--revision")
    migrate.set_defaults(func=cmd_migrate)

    seed = sub.add_parser("seed", help="load deterministic synthetic data")
    seed.add_argument("--scale", default="demo", help="demo, bench, tiny or a number (demo = 1)")
    seed.add_argument("--seed", type=int, default=20251123)
    seed.add_argument("--if-empty", action="store_true")
    seed.set_defaults(func=cmd_seed)

    bench = sub.add_parser("bench", help="run a benchmark case and record it in BENCHMARKS.md")
    bench.add_argument("case")
    bench.add_argument("--scale", default="1")
    bench.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    bench.set_defaults(func=cmd_bench)

    # Dispatched by main() before parsing, so every argument (options included) reaches `dagster`.
    sub.add_parser("dagster", help="run the dagster CLI against this project's instance, e.g. `pso dagster "
                   "instance info` (DAGSTER_HOME and the endpoints set, embedded services started if needed)")

    if not include_families:
        return parser
    from orchestration.cli.families import add_family_commands

    add_family_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        if argv and argv[0] == "dagster":
            get_settings()
            return cmd_dagster(argv[1:])
        # The core commands must work even while a family module is broken (e.g. to stop services).
        core_only = bool(argv) and argv[0] in CORE_COMMANDS
        args = build_parser(include_families=not core_only).parse_args(argv)
        get_settings()  # fail early, naming the variable, on a malformed setting
        return args.func(args) or 0
    except SettingsError as error:
        print(f"pso: configuration error: {error}", file=sys.stderr)
        return 2
    except ServiceError as error:
        print(f"pso: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
