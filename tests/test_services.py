"""The embedded services start, tolerate a second start, and stop without orphans."""

import os
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest
import psycopg

from orchestration.services import EmbeddedPostgres, EmbeddedS3, free_port_block


def _processes_using(path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(path) in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


@pytest.fixture
def data_dir():
    """Outside pytest's tmp folder, whose 0700 mode would lock out the unprivileged Postgres user."""
    path = Path(tempfile.mkdtemp(prefix="pso-test-services-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_postgres_starts_twice_harmlessly_and_stops_cleanly(data_dir):
    server = EmbeddedPostgres(data_dir, free_port_block(1, start=36000))
    try:
        assert server.start() is True
        assert server.start() is False  # already running: harmless
        with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=pso") as conn:
            assert conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0] >= 180000
            user = conn.execute("SELECT current_setting('shared_buffers')").fetchone()[0]
            assert user == "2GB"  # the tuned config is in force
        if os.geteuid() == 0:
            owner = psutil.Process(server_pid(server)).username()
            assert owner != "root"
    finally:
        assert server.stop() is True
    assert server.stop() is False
    assert not server.is_running()
    assert _processes_using(server.pgdata) == []


def server_pid(server: EmbeddedPostgres) -> int:
    return int((server.pgdata / "postmaster.pid").read_text().splitlines()[0])


def test_s3_starts_twice_harmlessly_and_stops_cleanly(data_dir):
    import boto3

    server = EmbeddedS3(data_dir, free_port_block(10, start=37000))
    try:
        assert server.start() is True
        assert server.start() is False
        key, secret = server.credentials()
        client = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=key,
                              aws_secret_access_key=secret, region_name="us-east-1")
        client.create_bucket(Bucket="roundtrip")
        client.put_object(Bucket="roundtrip", Key="a/b.txt", Body=b"hello")
        assert client.get_object(Bucket="roundtrip", Key="a/b.txt")["Body"].read() == b"hello"
        # credentials are enforced: the endpoint is not open to anyone on the machine
        stranger = boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id="nobody",
                                aws_secret_access_key="nothing", region_name="us-east-1")
        try:
            stranger.list_buckets()
            raise AssertionError("anonymous credentials were accepted")
        except stranger.exceptions.ClientError:
            pass
        assert oct(server.credentials_file.stat().st_mode & 0o777) == "0o600"
    finally:
        assert server.stop() is True
    assert not server.is_running()
    assert _processes_using(server.dir) == []
