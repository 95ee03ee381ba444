#!/usr/bin/env bash
# Install what the tests need, then run lint, types, import contracts and the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "== ruff"; python3 -m ruff check .
echo "== mypy"; python3 -m mypy
echo "== import contracts"; lint-imports
echo "== pytest"
HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" python3 -m pytest "$@"
