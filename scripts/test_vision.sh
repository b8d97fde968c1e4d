#!/usr/bin/env bash
# The optional `autoprune[vision]` extra in its own venv: torchvision does not import beside the CPU torch 2.13.0,
# so this venv takes torch 2.14.1 + torchvision 0.29.1 (from local disk, ~1 min, ~5.5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${AUTOPRUNE_VISION_VENV:-.venv-vision}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 -e '.[vision]' pytest
"$VENV/bin/pytest" -m vision tests/test_vision.py -p no:cacheprovider "$@"
