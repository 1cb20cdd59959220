#!/usr/bin/env bash
# Offline checks for cloudformation/template.yaml:
#   1. cfn-lint (pinned) with informational rules included: any finding fails;
#   2. structural rules over the template, each proven able to fail (tests/test_rules.py);
#   3. the stack created in a moto server (tests/test_moto_stack.py), the boot-route model
#      (tests/test_reachability.py) and the other tests under tests/;
#   4. shellcheck over every script the instances run, and the bootstraps run in a throwaway root
#      with recording stand-ins (tests/test_userdata.py);
#   5. the shells' S3 paths (debug binaries, local RabbitMQ) under the template's own IAM statements
#      in a second, IAM-enforcing moto server (tests/test_iam_moto.py);
#   6. checkov (pinned, in its own virtualenv under ~/.cache so its pins never move cfn-lint's or
#      moto's), offline (BC_SKIP_MAPPING=TRUE): any failed check fails; suppressions are inline,
#      each with a reason, and listed in docs/aws.md.
#
# Uses the moto server at $AWS_ENDPOINT_URL when set (the project's test script starts one);
# otherwise starts its own on a free loopback port and stops it on exit. Never talks to AWS:
# the moto test refuses any endpoint that is not on the loopback interface.
#
# Usage: cloudformation/check.sh        (PYTHON=python3.x to pick an interpreter)
set -euo pipefail

CFN_LINT_VERSION=1.51.0
MOTO_VERSION=5.2.1
CHECKOV_VERSION=3.3.30
PIKA_VERSION=1.4.4
CHECKOV_VENV="${CLOUDIMG_CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/cloudimg-checkov-$CHECKOV_VERSION}"

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
ensure pika "$PIKA_VERSION" "pika==$PIKA_VERSION"

if [ "$("$CHECKOV_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null)" \
        != "$CHECKOV_VERSION" ]; then
    echo "check.sh: installing checkov==$CHECKOV_VERSION into $CHECKOV_VENV"
    "$PY" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi

# shellcheck for the instances' scripts (tests/test_userdata.py renders and checks them).
if ! command -v shellcheck >/dev/null 2>&1; then
    echo "check.sh: installing shellcheck (apt)"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q shellcheck >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q shellcheck >/dev/null 2>&1; } || true
    fi
    command -v shellcheck >/dev/null 2>&1 || { echo "check.sh: shellcheck missing; install it (apt install shellcheck)" >&2; exit 1; }
fi
export CLOUDIMG_REQUIRE_SHELLCHECK=1

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

echo "== checkov $CHECKOV_VERSION (offline; a failed check fails, suppressions need a reason)"
if BC_SKIP_MAPPING=TRUE "$CHECKOV_VENV/bin/checkov" --file template.yaml --framework cloudformation \
        --quiet --compact --skip-download; then
    echo "checkov: no failed checks"
else
    echo "checkov: failed checks above" >&2
    status=1
fi

echo "== template rules and moto stack test"
if ! "$PY" tests/run.py; then
    status=1
fi

exit "$status"
