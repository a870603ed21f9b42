#!/usr/bin/env bash
# Set up (first run only) and run the framecast command line: ./framecast.sh generate "a prompt" -o out.mp4
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/scripts/setup.sh" >&2
exec "$here/.venv/bin/framecast" "$@"
