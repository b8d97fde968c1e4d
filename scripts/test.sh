#!/usr/bin/env bash
# Install autoprune with its test tools into .venv and run lint, types and the whole test suite.
# Usage: bash scripts/test.sh [extra pytest args]      (.ci/run calls exactly this)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AUTOPRUNE_VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.13.0 -e '.[dev]'

# Chromium (Debian's package) for the headless MLflow-UI test
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "test.sh: could not install chromium; the browser test will say so" >&2
fi

# shellcheck source=scripts/pg.sh
. scripts/pg.sh
trap stop_pg EXIT
start_pg

"$VENV/bin/ruff" check autoprune tests
"$VENV/bin/mypy"
"$VENV/bin/pytest" -n 2 --durations=15 -m "not vision" "$@"
bash scripts/test_vision.sh
