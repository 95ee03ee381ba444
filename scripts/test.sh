#!/usr/bin/env bash
# Install what the tests need, then run lint, types, import contracts and the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# redis-cli and redis-benchmark (Debian's redis-tools) for the client-protocol
# tests; redis-server as the reference target of `ringkv bench`'s tests
# (tests/integration/test_bench.py); iptables for the fault tests' cut-offs
# (tests/faults, docs/testing.md); ip (iproute2) for the network namespaces of
# the multi-host test (tests/integration/test_multihost.py).
missing=()
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "== ruff"; python3 -m ruff check .
echo "== mypy"; python3 -m mypy
echo "== import contracts"; lint-imports
echo "== pytest"
HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" python3 -m pytest "$@"
