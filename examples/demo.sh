#!/usr/bin/env bash
# The whole job in one go: installs fcgi-asgi into .venv (and nginx from Debian's
# packages when it is missing and we are root), serves examples/starlette_app.py
# through the gateway on a unix socket, puts nginx in front with the stock
# config from examples/nginx/stock.conf, and asks nginx for a few pages.
# Everything it starts is stopped on exit; it binds 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e . starlette fastapi
if ! command -v nginx >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light curl >/dev/null
fi

work=$(mktemp -d /tmp/fcgi-asgi-demo.XXXXXX)
chmod 755 "$work"  # nginx's workers run as an unprivileged user
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

wait_for() { for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done; return 1; }

# --socket-mode: nginx's workers (not root) must be able to connect.
.venv/bin/fcgi-asgi examples.starlette_app:app --socket "$work/main.sock" --socket-mode 0666 &
pids+=($!)
.venv/bin/fcgi-asgi examples.fastapi_app:app --socket "$work/app.sock" --socket-mode 0666 --root-path /app &
pids+=($!)
wait_for "$work/main.sock" && wait_for "$work/app.sock"

echo "--- the gateway over FastCGI: fcgi-asgi request --socket $work/main.sock -i /"
.venv/bin/fcgi-asgi request --socket "$work/main.sock" -i /
echo

if ! command -v nginx >/dev/null; then
    echo "(nginx is not installed: run as root, or 'apt-get install nginx-light', to see it behind nginx)"
    exit 0
fi
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cp /etc/nginx/fastcgi_params "$work/fastcgi_params"
.venv/bin/python examples/render.py examples/nginx/stock.conf \
    port="$port" prefix="$work" socket="$work/main.sock" app_socket="$work/app.sock" > "$work/nginx.conf"
nginx -p "$work" -c "$work/nginx.conf" -e "$work/error.log" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

get() {
    echo "--- through nginx: GET $1"
    if command -v curl >/dev/null; then curl -sS -i "http://127.0.0.1:$port$1"; else
        .venv/bin/python -c 'import sys, urllib.request as u; r = u.urlopen(sys.argv[1]); print(r.status, r.reason); print(r.read().decode())' "http://127.0.0.1:$port$1"
    fi
    echo
}
get /
get /items/42
get /app/items/7?q=hello
