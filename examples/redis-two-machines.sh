#!/usr/bin/env bash
# Two nginx "machines" sharing their channels through one Redis, all on this
# host: Redis on 127.0.0.1:6390, machine A on :8090 (publish side :8091),
# machine B on :8092 (publish side :8093). Prints curl commands to try;
# Ctrl-C stops everything it started (by pid).
# Needs the built module (make build), redis-server and nginx.
set -euo pipefail
cd "$(dirname "$0")/.."
module="$PWD/build/ngx_http_sse_module.so"
[ -f "$module" ] || { echo "build the module first: make build" >&2; exit 1; }
for port in 6390 8090 8091 8092 8093; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port on 127.0.0.1 is in use; stop what holds it first" >&2
        exit 1
    fi
done
dir="$PWD/build/redis-example"
rm -rf "$dir"
mkdir -p "$dir/redis"

redis-server --port 6390 --bind 127.0.0.1 --dir "$dir/redis" \
    --save '' --appendonly yes --appendfsync everysec \
    --maxmemory 256mb --maxmemory-policy noeviction \
    --logfile "$dir/redis/redis.log" --daemonize no &
redis_pid=$!

user=""
[ "$(id -u)" = 0 ] && user="user root;"
machine() {  # name public-port publish-port
    mkdir -p "$dir/$1"
    cat > "$dir/$1/nginx.conf" <<CONF
load_module $module;
worker_processes 2;
error_log $dir/$1/error.log info;
pid $dir/$1/nginx.pid;
daemon off;
$user
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $dir/$1/body;
    sse_zone zone=chat:16m redis=redis://127.0.0.1:6390/0 redis_timeout=1s;
    server {
        listen 127.0.0.1:$2;
        location ~ ^/events/(?<ch>[a-z0-9_-]+)\$ {
            sse_subscribe;
            sse_channel \$ch;
            sse_initial_events 5;
            sse_heartbeat 10s;
        }
        location = /status { sse_status; }
    }
    server {
        listen 127.0.0.1:$3;
        location ~ ^/publish/(?<ch>[a-z0-9_-]+)\$ {
            sse_publish;
            sse_channel \$ch;
        }
    }
}
CONF
    nginx -p "$dir/$1/" -c "$dir/$1/nginx.conf" -e "$dir/$1/error.log" &
}

pids=()
stop() {
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -QUIT "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq 50); do
    redis-cli -p 6390 ping >/dev/null 2>&1 && break
    sleep 0.1
done
machine a 8090 8091; pids+=($!)
machine b 8092 8093; pids+=($!)
sleep 1

cat <<TXT
Redis on 127.0.0.1:6390; machine A on :8090 (publish :8091), B on :8092
(publish :8093). In other terminals:

  # a subscriber on machine B
  curl -N http://127.0.0.1:8092/events/room1

  # publish on machine A: B's subscriber gets it
  curl -d 'hello from A' http://127.0.0.1:8091/publish/room1

  # resume on machine A from an id B printed (same ids everywhere)
  curl -N -H 'Last-Event-ID: <id>' http://127.0.0.1:8090/events/room1

  # the zone's figures, Redis connection included
  curl http://127.0.0.1:8090/status

  # what Redis holds
  redis-cli -p 6390 --scan --pattern '{sse:chat}*'

Ctrl-C stops Redis and both nginx.
TXT
wait
