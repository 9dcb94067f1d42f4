#!/usr/bin/env bash
# Installs fcgi-asgi into .venv, serves examples/hello.py on a unix socket,
# shows it answering a FastCGI request, then stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e .
sock=$(mktemp -u /tmp/fcgi-asgi-demo.XXXXXX.sock)
.venv/bin/fcgi-asgi examples.hello:app --socket "$sock" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
echo "--- fcgi-asgi request --socket $sock -i /"
.venv/bin/fcgi-asgi request --socket "$sock" -i /
