"""``ray job submit`` with the client's auth mode matched to the cluster's.

    python pipelines/submit.py --address http://HEAD:8265 -- python pipelines/distill.py --config sa1b-1pct

Ray 2.60 clusters may run with token authentication (``RAY_AUTH_MODE=token``) or without. The
``ray job submit`` client must use the same mode: a client in the default mode cannot talk to a
token cluster even when it has the token, and fails with "Token authentication is enabled but no
authentication token was found". This wrapper probes the dashboard (HTTP 401 = token required),
sets ``RAY_AUTH_MODE`` for the submit accordingly, checks that a token is available
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), then runs ``ray job submit``
with ``--working-dir .`` and every other option passed through.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path


def token_available(env: dict[str, str]) -> bool:
    if env.get("RAY_AUTH_TOKEN"):
        return True
    path = env.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file() and Path(path).read_text().strip() != ""


def cluster_requires_token(address: str, timeout: float = 10.0) -> bool:
    """Probe the dashboard's version endpoint without credentials: 401/403 means token auth."""
    url = address.rstrip("/") + "/api/version"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return False
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return True
        raise RuntimeError(f"dashboard at {address} answered HTTP {exc.code} to {url}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"cannot reach the Ray dashboard at {address} ({exc}); is the address right "
                           "(http://HEAD:8265) and the cluster up?") from exc


def auth_env(address: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` with RAY_AUTH_MODE matching the cluster at ``address``."""
    env = dict(os.environ if env is None else env)
    if cluster_requires_token(address):
        if not token_available(env):
            raise RuntimeError(
                f"the cluster at {address} requires token authentication but no token was found: set RAY_AUTH_TOKEN, "
                "or RAY_AUTH_TOKEN_PATH to the cluster's token file (on the head node: ~/.ray/auth_token)")
        env["RAY_AUTH_MODE"] = "token"
    else:
        env["RAY_AUTH_MODE"] = "disabled"
    return env


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python pipelines/submit.py [--address URL] [ray job submit options] -- ENTRYPOINT...", file=sys.stderr)
        return 2
    split = argv.index("--")
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
                        or "http://127.0.0.1:8265")
    known, passthrough = parser.parse_known_args(argv[:split])
    address = known.address if known.address.startswith("http") else f"http://{known.address}"
    try:
        env = auth_env(address)
    except RuntimeError as exc:
        print(f"[submit] {exc}", file=sys.stderr)
        return 2
    print(f"[submit] cluster {address}: RAY_AUTH_MODE={env['RAY_AUTH_MODE']}", flush=True)
    if "--working-dir" not in passthrough:
        passthrough = ["--working-dir", ".", *passthrough]
    cmd = ["ray", "job", "submit", "--address", address, *passthrough, "--", *argv[split + 1:]]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main())
