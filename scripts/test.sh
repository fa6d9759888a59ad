#!/usr/bin/env bash
# The test command: installs what the tests need (the programs they start,
# from Debian's packages, and the Python packages into .venv) and runs them.
#   bash scripts/test.sh [pytest arguments...]
# Fails on a lint or type error, on a failing test, and when no test ran (pytest exit 5).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/test-tools.sh

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
# compat: the flat layout's twisted/plugins/ must be on sys.path for twistd.
.venv/bin/python -m pip install -q --config-settings editable_mode=compat -e '.[test]'

.venv/bin/ruff check .
# Type check, with setup.cfg's [mypy] section: sipsuite/ (the module API
# held to --strict) and tests/typing_checks.py (ProxyCore and FakeCore are
# both a CoreAPI).
.venv/bin/mypy
.venv/bin/python -m pytest -q "$@"
