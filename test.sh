#!/usr/bin/env bash
# Set up (first run only) and run the checks: lint, types, tests. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh dev,server
# the server tests drive a real browser (Debian's chromium, never a browser download) and an HTTP client;
# without chromium, and without root or passwordless sudo to install it, the browser tests skip and say why
install_chromium() {
  command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 && return 0
  local root=""
  if [ "$(id -u)" != 0 ]; then
    sudo -n true 2>/dev/null || return 0
    root="sudo -n"
  fi
  echo "test.sh: installing Debian's chromium for the browser tests" >&2
  { $root apt-get update -qq && $root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "test.sh: could not install chromium: the browser tests will skip" >&2
}
install_chromium
.venv/bin/python -m pip show playwright httpx >/dev/null 2>&1 || .venv/bin/python -m pip install -q playwright httpx
.venv/bin/ruff check src tests
.venv/bin/mypy src/framecast
.venv/bin/python -m pytest -q "$@"
