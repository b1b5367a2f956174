"""A real S3-compatible server on 127.0.0.1 for tests: moto's ``moto_server`` (dev extra ``moto[server]``).

``s3_server()`` starts it on a free port, points the standard AWS environment variables at it (Ray
workers of a local cluster started afterwards inherit them), and on exit stops only the process it
started and restores the environment.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from tests.raycluster import free_port

AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
            "AWS_EC2_METADATA_DISABLED")


def _moto_command() -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("moto_server")
    return [found] if found else [sys.executable, "-m", "moto.server"]


@contextlib.contextmanager
def s3_server(log_dir: Path) -> Iterator[str]:
    """Yield the endpoint URL of a fresh moto S3 server; the AWS_* variables point at it meanwhile."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(log_dir / "moto_server.log", "wb")
    proc = subprocess.Popen([*_moto_command(), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    saved = {k: os.environ.get(k) for k in AWS_VARS}
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"moto_server did not start (see {log_dir / 'moto_server.log'})")
                time.sleep(0.3)
        os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")
        from edgesam import storage

        storage._filesystem.cache_clear()  # clients made before the endpoint was set must not be reused
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def make_bucket(name: str) -> str:
    """Create a bucket on the current endpoint; returns ``s3://name``."""
    import pyarrow.fs as pafs

    # from_uri reads the endpoint and keys from the environment (the bare S3FileSystem() ignores AWS_ENDPOINT_URL)
    fs, _ = pafs.FileSystem.from_uri(f"s3://{name}?allow_bucket_creation=true")
    fs.create_dir(name)
    return f"s3://{name}"
