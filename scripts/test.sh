#!/usr/bin/env bash
# Install the project with its test extras (plus Chromium and playwright-core for the browser test)
# into .venv, then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[dev]'
bash scripts/install_browser.sh || echo "WARNING: browser test dependencies could not be installed; the browser test will skip"
python -m pytest -ra --durations=25 "$@"
