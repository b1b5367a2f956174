#!/usr/bin/env bash
# Debian's Chromium and playwright-core (no browser download) for tests/test_serve_browser.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
echo "browser test deps: $(chromium --version 2>/dev/null | head -1), playwright-core $(node -p "require('./tests/browser/node_modules/playwright-core/package.json').version")"
