#!/usr/bin/env bash
# Runs nginx in the foreground with examples/nginx.conf; Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/demo
for port in 8080 8081; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port on 127.0.0.1 is in use; stop what holds it first" >&2
        exit 1
    fi
done
/usr/sbin/nginx -p "$PWD/" -c examples/nginx.conf -t -q
cat <<MSG

ngx_http_sse_module demo: nginx on 127.0.0.1:8080 (subscribe) and :8081 (publish)

  subscribe:  curl -N http://127.0.0.1:8080/events/demo
  publish:    curl -d 'hello' http://127.0.0.1:8081/publish/demo
  resume:     curl -N -H 'Last-Event-ID: <an id you saw>' http://127.0.0.1:8080/events/demo
  channel:    curl http://127.0.0.1:8081/publish/demo

error log: build/demo/error.log — Ctrl-C to stop.

MSG
exec /usr/sbin/nginx -p "$PWD/" -c examples/nginx.conf -g 'daemon off;'
