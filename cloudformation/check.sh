#!/usr/bin/env bash
# Offline checks for cloudformation/template.yaml:
#   1. cfn-lint (pinned) with informational rules included: any finding fails;
#   2. structural rules over the template, each proven able to fail (tests/test_rules.py);
#   3. the stack created in a moto server (tests/test_moto_stack.py).
#
# Uses the moto server at $AWS_ENDPOINT_URL when set (the project's test script starts one);
# otherwise starts its own on a free loopback port and stops it on exit. Never talks to AWS:
# the moto test refuses any endpoint that is not on the loopback interface.
#
# Usage: cloudformation/check.sh        (PYTHON=python3.x to pick an interpreter)
set -euo pipefail

CFN_LINT_VERSION=1.51.0
MOTO_VERSION=5.2.1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
PY="${PYTHON:-python3}"

installed_version() {
    "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true
}

ensure() { # ensure DIST VERSION PIP_SPEC [IMPORT_CHECK]
    local have
    have="$(installed_version "$1")"
    if [ "$have" != "$2" ] || { [ -n "${4:-}" ] && ! "$PY" -c "$4" 2>/dev/null; }; then
        echo "check.sh: installing $3 (found ${have:-none})"
        "$PY" -m pip install --quiet --disable-pip-version-check "$3"
    fi
}

ensure cfn-lint "$CFN_LINT_VERSION" "cfn-lint==$CFN_LINT_VERSION"
ensure moto "$MOTO_VERSION" "moto[server]==$MOTO_VERSION" "import flask, flask_cors, boto3"

status=0

echo "== cfn-lint $(installed_version cfn-lint) (errors, warnings and informational findings all fail)"
if "$PY" -c 'import sys; from cfnlint.runner import main; sys.argv[0] = "cfn-lint"; sys.exit(main())' \
        --include-checks I -- template.yaml; then
    echo "cfn-lint: no findings"
else
    echo "cfn-lint: findings above" >&2
    status=1
fi

moto_pid=""
cleanup() {
    if [ -n "$moto_pid" ]; then
        kill "$moto_pid" 2>/dev/null || true
        wait "$moto_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if [ -z "${AWS_ENDPOINT_URL:-}" ]; then
    port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    log="$(mktemp -t cfn-moto.XXXXXX.log)"
    "$PY" -m moto.server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    moto_pid=$!
    export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
        if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + "/moto-api/", timeout=1)' \
                "$AWS_ENDPOINT_URL" 2>/dev/null; then
            break
        fi
        if ! kill -0 "$moto_pid" 2>/dev/null; then
            echo "check.sh: moto_server exited; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "== moto server started at $AWS_ENDPOINT_URL (pid $moto_pid)"
else
    echo "== using the moto server at $AWS_ENDPOINT_URL"
fi

echo "== template rules and moto stack test"
if ! "$PY" tests/run.py; then
    status=1
fi

exit "$status"
