#!/usr/bin/env bash
# `make demo`: nginx with examples/nginx.conf in the foreground (public side
# 127.0.0.1:8080, internal side :8081) and the pretend AI model
# examples/ai_model.py on :8082. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/demo
for port in 8080 8081 8082; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port on 127.0.0.1 is in use; stop what holds it first" >&2
        exit 1
    fi
done

# As root, nginx's workers run as `nobody`. When nobody cannot read the
# pages (a clone under /root, say), they run as the owner of the files.
globals="daemon off;"
if [ "$(id -u)" = 0 ] && ! runuser -u nobody -- test -r examples/www/index.html 2>/dev/null; then
    globals="$globals user $(stat -c %U examples/www/index.html);"
fi
/usr/sbin/nginx -p "$PWD/" -c examples/nginx.conf -g "$globals" -t -q

model_pid=""
nginx_pid=""
stop() {
    trap - EXIT INT TERM
    if [ -n "$nginx_pid" ]; then
        kill -QUIT "$nginx_pid" 2>/dev/null || true
        wait "$nginx_pid" 2>/dev/null || true
    fi
    if [ -n "$model_pid" ]; then
        kill "$model_pid" 2>/dev/null || true
        wait "$model_pid" 2>/dev/null || true
    fi
}
trap stop EXIT
trap 'exit 130' INT TERM

/usr/bin/python3 examples/ai_model.py --port 8082 \
    --publish http://127.0.0.1:8081/publish/ &
model_pid=$!

cat <<MSG

ngx_http_sse_module demo

  open:       http://127.0.0.1:8080/          (chat rooms, streamed AI answers)

  log in:     curl -c /tmp/sse-demo-jar -H 'Content-Type: application/json' \
                  -d '{"name":"curl"}' http://127.0.0.1:8080/chat/token
  subscribe:  curl -N -b /tmp/sse-demo-jar http://127.0.0.1:8080/chat/events/lobby
  chat:       curl -H 'SSE-Event: chat' -d '{"name":"curl","text":"hi","ts":0}' \\
                  http://127.0.0.1:8081/publish/chat:lobby
  any channel: curl -N http://127.0.0.1:8080/events/demo
              curl -d 'hello' http://127.0.0.1:8081/publish/demo
  resume:     curl -N -H 'Last-Event-ID: <an id you saw>' http://127.0.0.1:8080/events/demo
  figures:    curl http://127.0.0.1:8080/status

nginx on 127.0.0.1:8080 (public) and :8081 (internal, publishers), the
pretend model on :8082 (pid $model_pid). Error log: build/demo/error.log.
Ctrl-C stops everything.

MSG

/usr/sbin/nginx -p "$PWD/" -c examples/nginx.conf -g "$globals" &
nginx_pid=$!
# Returns when nginx exits, or at Ctrl-C (then the EXIT trap stops both).
wait "$nginx_pid" || true
