#!/usr/bin/python3
"""Side-by-side benchmark: ngx_http_sse_module against nchan.

Both modules load into the same nginx binary (Debian's /usr/sbin/nginx) with
configurations made alike: 2 workers, 20000 worker connections and open
files, a 128 MiB shared zone, 1000 messages buffered per channel, 1 h message
lifetime, no heartbeats/pings, new subscribers start with the next event,
same body-buffer and keep-alive settings, `listen ... backlog=4096`.
Each scenario starts a fresh nginx for this module, then one for nchan, on
free 127.0.0.1 ports in a temporary prefix, drives it with build/sseload,
and stops it by its pid.

Writes bench/results/<timestamp>.json, one PNG chart per scenario beside it
and BENCHMARKS.md at the repository root. Every figure comes from the run.

    /usr/bin/python3 bench/run.py                 # the full default run
    /usr/bin/python3 bench/run.py --scale small   # a few seconds per scenario
    /usr/bin/python3 bench/run.py --tiny --results /tmp/x   # what t/ runs
    /usr/bin/python3 bench/run.py --only burst,publish --repeat 3
"""

import argparse
import atexit
import datetime
import hashlib
import json
import os
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pylib"))
import sselib.nginx  # noqa: E402
import sselib.proc  # noqa: E402
from sselib.nginx import NginxProcess, PortTaken, free_port  # noqa: E402
from sselib.proc import conns_per_process, loadavg  # noqa: E402

BENCH = ROOT / "bench"
BUILD = ROOT / "build"
SSELOAD = BUILD / "sseload"
SSELOAD_SRC = BENCH / "sseload"  # main.cpp and its parts
FLOOR = BUILD / "floor"
MODULE = Path(os.environ.get("SSE_MODULE") or BUILD / "ngx_http_sse_module.so")
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
NGINX = "/usr/sbin/nginx"

KINDS = ("ours", "nchan")
LABEL = {"ours": "ngx_http_sse_module", "nchan": "nchan",
         "floor": "floor (bench/floor.cpp)"}
# The floor (a single-thread epoll server that does nothing but one write()
# per subscriber per event) runs beside both in the scenarios that measure
# delivery latency: the reference line.
FLOOR_SCENARIOS = {"burst", "latency", "channels", "after_burst"}


SERVERS = set(KINDS) | {"floor"}  # --servers narrows it


def kinds_of(name):
    out = KINDS + ("floor",) if name in FLOOR_SCENARIOS else KINDS
    return tuple(k for k in out if k in SERVERS)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- scales

# Per scale: the parameters of each scenario. `full` is the default.
SCALES = {
    "full": {
        # matched_rate: the same events again, every server published at
        # this fixed rate (a bit under what nchan reaches closed-loop), so
        # the latencies compare like for like.
        "burst": {"subscribers": [1000, 5000], "events": 100, "size": 64,
                  "matched_rate": {1000: 50}},
        "latency": {"subscribers": [1000, 5000], "rate": 20, "seconds": 5,
                    "size": 64},
        "after_burst": {"subscribers": 1000, "burst": 100, "rate": 20,
                        "seconds": 5, "size": 64},
        "channels": {"subscribers": 5000, "channels": 1000, "events": 10000,
                     "publishers": 4, "size": 64, "matched_rate": 4000},
        "memory": {"subscribers": 10000, "channels": 1},
        "publish": {"sizes": [64, 16384], "events": {64: 20000, 16384: 5000},
                    "publishers": 4},
        "resume": {"subscribers": 1000, "buffered": 1000, "behind": 500},
        "sweep": {"channels": 100000, "active": 100, "rate": 200,
                  "seconds": 12, "size": 64},
        "scale": {"subscribers": 50000, "generators": 4, "addresses": 4,
                  "workers": 4, "events": 10, "size": 64},
    },
    "small": {  # seconds per scenario; safe beside other work
        "burst": {"subscribers": [50, 100], "events": 100, "size": 64,
                  "matched_rate": {100: 200}},
        "latency": {"subscribers": [50, 100], "rate": 20, "seconds": 2,
                    "size": 64},
        "after_burst": {"subscribers": 100, "burst": 100, "rate": 20,
                        "seconds": 2, "size": 64},
        "channels": {"subscribers": 100, "channels": 20, "events": 1000,
                     "publishers": 4, "size": 64, "matched_rate": 1000},
        "memory": {"subscribers": 100, "channels": 1},
        "publish": {"sizes": [64, 16384], "events": {64: 2000, 16384: 500},
                    "publishers": 4},
        "resume": {"subscribers": 100, "buffered": 1000, "behind": 500},
        "sweep": {"channels": 2000, "active": 10, "rate": 100,
                  "seconds": 7, "size": 64},
        "scale": {"subscribers": 2000, "generators": 2, "addresses": 2,
                  "workers": 4, "events": 10, "size": 64},
    },
    "tiny": {
        "burst": {"subscribers": [10], "events": 10, "size": 64,
                  "matched_rate": {10: 100}},
        "scale": {"subscribers": 20, "generators": 2, "addresses": 2,
                  "workers": 4, "events": 5, "size": 64},
    },
}
ORDER = ["burst", "latency", "after_burst", "channels", "memory", "publish",
         "resume", "sweep", "scale"]

TITLES = {
    "burst": "1. Burst fan-out: one channel, events published as fast as "
             "the publisher gets answers",
    "latency": "2. Paced latency: publish-to-receive on one channel",
    "channels": "3. Many channels: events spread round-robin over channels",
    "memory": "4. Memory: idle subscribers",
    "publish": "5. Publish rate: one channel, no subscribers",
    "resume": "6. Resume storm: subscribers reconnect at once with "
              "Last-Event-ID",
    "after_burst": "2b. Paced latency right after a burst on another "
                   "channel",
    "sweep": "7. Publish response time beside 100,000 channels (the "
             "expiry sweep)",
    "scale": "8. Scale: 50,000 subscribers on one channel, 4 workers",
}


# ---------------------------------------------------------------- nginx

CONF = """\
load_module {module};

worker_processes {workers};
worker_rlimit_nofile 20000;
error_log {d}/error.log notice;
pid {d}/nginx.pid;
daemon on;
master_process on;
{user}

events {{
    worker_connections 20000;
}}

http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_body_buffer_size 64k;
    client_max_body_size 1m;
    keepalive_requests 1000000;
    keepalive_timeout 300s;

    {http}

    server {{
        listen 127.0.0.1:{sub_port} backlog=4096{reuseport};
        {sub}
    }}

    server {{
        listen 127.0.0.1:{pub_port} backlog=4096;
        {pub}
        {status}
    }}
}}
"""

MODULE_CONF = {
    "ours": {
        "http": "sse_zone zone=sse:128m;",
        "sub": r"location ~ ^/events/(?<ch>[\w.:@~-]+)$ { sse_subscribe; "
               r"sse_channel $ch; sse_heartbeat off; }",
        "pub": r"location ~ ^/publish/(?<ch>[\w.:@~-]+)$ { sse_publish; "
               r"sse_channel $ch; sse_buffer_length 1000; "
               r"sse_message_ttl 1h; } "
               # events that expire during the sweep scenario
               r"location ~ ^/short/(?<ch>[\w.:@~-]+)$ { sse_publish; "
               r"sse_channel $ch; sse_buffer_length 1000; "
               r"sse_message_ttl 5s; }",
        "status": "location = /status { sse_status; }",
        "sub_path": "/events/{ch}",
        "pub_path": "/publish/{ch}",
    },
    "nchan": {
        "http": "nchan_shared_memory_size 128m;",
        # EventSource mode comes from the request's Accept header.
        "sub": r"location ~ ^/sub/(?<ch>[\w.:@~-]+)$ { nchan_subscriber; "
               r"nchan_channel_id $ch; nchan_eventsource_ping_interval 0; "
               r"nchan_subscriber_first_message newest; }",
        "pub": r"location ~ ^/pub/(?<ch>[\w.:@~-]+)$ { nchan_publisher; "
               r"nchan_channel_id $ch; nchan_message_buffer_length 1000; "
               r"nchan_message_timeout 1h; } "
               r"location ~ ^/short/(?<ch>[\w.:@~-]+)$ { nchan_publisher; "
               r"nchan_channel_id $ch; nchan_message_buffer_length 1000; "
               r"nchan_message_timeout 5s; }",
        "status": "location = /status { nchan_stub_status; }",
        "sub_path": "/sub/{ch}",
        "pub_path": "/pub/{ch}",
    },
}

MODULE_CONF["floor"] = {"sub_path": "/events/{ch}",
                       "pub_path": "/publish/{ch}"}

BAD_LOG = re.compile(sselib.nginx.BAD_LOG.pattern + r"|exited on signal")


def nginx_env(kind, d):
    """nginx's environment: with SSE_PRELOAD (make test-asan), this module's
    nginx gets the sanitizer runtime preloaded and reports into
    d/sanitizer.PID (see pylib/sselib/nginx.py); nchan's never does."""
    return sselib.nginx.nginx_env(d) if kind == "ours" else dict(os.environ)


class Server(NginxProcess):
    """One nginx (master + 2 workers) with one of the two modules."""

    def __init__(self, kind, workdir, module_copy, status_ok, workers=2):
        # More than 2 workers (the scale scenario): subscribers are spread
        # over them with reuseport, so no worker needs over 20,000 files.
        super().__init__(workdir, nworkers=workers, nginx_bin=NGINX,
                         env=nginx_env(kind, workdir))
        self.kind = kind
        self.module = module_copy
        self.status_ok = status_ok
        self.sub_port = self.pub_port = None

    def render(self):
        m = MODULE_CONF[self.kind]
        return CONF.format(
            module=self.module, d=self.dir,
            user="user root;" if os.geteuid() == 0 else "",
            http=m["http"], sub=m["sub"], pub=m["pub"],
            status=m["status"] if self.status_ok else "",
            sub_port=self.sub_port, pub_port=self.pub_port,
            workers=self.nworkers,
            reuseport=" reuseport" if self.nworkers > 2 else "")

    def start(self):
        for attempt in range(3):  # a port may be taken between probe and bind
            self.sub_port, self.pub_port = free_port(), free_port()
            self.conf.write_text(self.render())
            try:
                return self.launch((self.sub_port, self.pub_port))
            except PortTaken:
                if attempt == 2:
                    raise

    def memory(self):
        """RSS and PSS (kB) summed over master and workers, and zone use."""
        rss, pss = self.rss_pss_kb()
        return {
            "rss_kb": rss,
            "pss_kb": pss,
            "processes": len(self.pids()),
            "zone_used_bytes": self.zone_used(),
        }

    def conns_per_worker(self):
        """Established connections to the subscriber port, per worker."""
        return conns_per_process(self.workers(), self.sub_port)

    def zone_used(self):
        if not self.status_ok:
            return None
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.pub_port}/status",
                    timeout=5) as r:
                body = r.read().decode()
        except OSError:
            return None
        if self.kind == "ours":
            try:
                return sum(z["bytes_used"] for z in json.loads(body)["zones"])
            except (ValueError, KeyError):
                return None
        m = re.search(r"shared memory used: (\d+)K", body)
        return int(m.group(1)) * 1024 if m else None

    def log_problems(self):
        try:
            text = (self.dir / "error.log").read_text(errors="replace")
        except OSError:
            return []
        bad = [ln for ln in (text + self.output).splitlines()
               if BAD_LOG.search(ln)]
        for f in sorted(self.dir.glob("sanitizer.*")):
            bad += f.read_text(errors="replace").strip().splitlines()[:20]
        return bad[:40]


class FloorServer:
    """build/floor on two free ports, as a server for the scenarios."""

    kind = "floor"

    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = None
        self.sub_port = self.pub_port = None

    def start(self):
        for _ in range(3):
            self.sub_port, self.pub_port = free_port(), free_port()
            log_f = open(self.dir / "floor.log", "w")
            self.proc = subprocess.Popen(
                [str(FLOOR), "--sub-port", str(self.sub_port),
                 "--pub-port", str(self.pub_port)],
                stdout=log_f, stderr=log_f)
            deadline = time.monotonic() + 5
            if all(sselib.nginx.wait_port(p, deadline)
                   for p in (self.sub_port, self.pub_port)) and \
                    self.proc.poll() is None:
                return self
            self.stop()
        raise RuntimeError("floor did not start: " +
                           (self.dir / "floor.log").read_text())

    def pids(self):
        return [self.proc.pid]

    def workers(self):
        return self.pids()

    def cpu(self):
        return sselib.proc.cpu_seconds(self.pids())

    def memory(self):
        rss, pss = (sselib.proc.proc_kb(self.proc.pid, "status", "VmRSS:"),
                    sselib.proc.pss_kb(self.proc.pid))
        return {"rss_kb": rss, "pss_kb": pss, "processes": 1,
                "zone_used_bytes": None}

    def conns_per_worker(self):
        return conns_per_process(self.pids(), self.sub_port)

    def stop(self):
        return sselib.proc.end_process(self.proc)

    def log_problems(self):
        return []


def make_server(kind, workdir, modules, status_ok, workers=2):
    if kind == "floor":
        return FloorServer(workdir)
    return Server(kind, workdir, modules[kind], status_ok[kind], workers)


# ---------------------------------------------------------------- sseload

def build_sseload():
    """make -C bench: the load generator and the floor server, when their
    sources are newer."""
    # Each binary against its own sources, as bench/Makefile has it (the
    # floor is not rebuilt when only sseload's sources change).
    srcs = {SSELOAD: list(SSELOAD_SRC.iterdir()), FLOOR: [BENCH / "floor.cpp"]}
    if all(b.exists() and b.stat().st_mtime >=
           max(f.stat().st_mtime for f in fs if f.exists())
           for b, fs in srcs.items()):
        return
    log("building build/sseload and build/floor")
    subprocess.run(["make", "-s", "-C", str(BENCH)], check=True)


def sseload_args(srv, mode, prefix, **kw):
    m = MODULE_CONF[srv.kind]
    args = [str(SSELOAD), "--mode", mode,
            "--sub-port", str(srv.sub_port), "--pub-port", str(srv.pub_port),
            "--sub-path", m["sub_path"], "--pub-path", m["pub_path"],
            "--prefix", prefix]
    for k, v in kw.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


def sseload_report(returncode, out, err):
    """The JSON report an sseload process printed, or why there is none."""
    if returncode != 0 or not out.strip():
        raise RuntimeError(f"sseload failed ({returncode}): "
                           f"{err.strip()[-2000:]}")
    return json.loads(out)


def run_sseload(srv, mode, prefix, timeout=60, **kw):
    args = sseload_args(srv, mode, prefix, timeout=timeout, **kw)
    before = srv.cpu()
    p = subprocess.run(args, capture_output=True, text=True,
                       timeout=timeout * 4 + 60)
    after = srv.cpu()
    r = sseload_report(p.returncode, p.stdout, p.stderr)
    r["server_cpu_s"] = {k: round(after[k] - before[k], 3) for k in after}
    return r


class Generators:
    """sseload processes that hold their subscribers until told to go:
    each prints "READY N" on stderr once its N subscribers are connected
    (and warmed up), then waits for a line on stdin (idle mode, or
    --wait-stdin). Starts them all and waits until every one is ready;
    kills them all and raises if one exits first or `timeout` s pass."""

    def __init__(self, arg_lists, timeout, what="sseload"):
        self.procs, self.tail = [], []
        lines = queue.Queue()
        for i, args in enumerate(arg_lists):
            pr = subprocess.Popen(args, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
            self.procs.append(pr)
            threading.Thread(target=self._pump, args=(pr, i, lines),
                             daemon=True).start()
        ready = {}
        deadline = time.monotonic() + timeout
        while len(ready) < len(self.procs) and time.monotonic() < deadline:
            try:
                i, line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("READY"):
                ready[i] = int(line.split()[1])
        if len(ready) < len(self.procs):
            for pr in self.procs:
                pr.kill()
                pr.wait()
            raise RuntimeError(f"{what} never got ready: " + self.stderr())
        self.ready = [ready[i] for i in range(len(self.procs))]

    def _pump(self, pr, i, lines):
        for line in pr.stderr:
            self.tail.append(line)
            lines.put((i, line))
        lines.put((i, None))

    def stderr(self):
        return "".join(self.tail)[-2000:]

    def go(self, procs=None):
        """A line on stdin: the given processes (all by default) start."""
        for pr in self.procs if procs is None else procs:
            pr.stdin.write("\n")
            pr.stdin.flush()

    def reports(self, timeout):
        """Each process's report, once all have ended."""
        outs = []
        for pr in self.procs:
            out, err = pr.communicate(timeout=timeout)
            outs.append(sseload_report(pr.returncode, out,
                                       self.stderr() + (err or "")))
        return outs


def hold(srv, arg_lists, timeout, what):
    """The server's memory while idle, then the generators of `arg_lists`
    started and ready, then its memory with their subscribers connected:
    (generators, idle, loaded)."""
    time.sleep(0.5)
    idle = srv.memory()
    gens = Generators(arg_lists, timeout, what)
    time.sleep(1.0)
    loaded = srv.memory()
    loaded["subscribers_per_worker"] = srv.conns_per_worker()
    return gens, idle, loaded


# ---------------------------------------------------------------- scenarios
#
# Each returns (metrics, raw): metrics is a flat {name: number or bool}
# for the tables, raw the sseload outputs.


def deliveries_ok(r):
    d = r.get("deliveries", {})
    return bool(d.get("exactly_once")) and bool(d.get("in_order"))


def each(values, run, unit=""):
    """run(v) -> (metrics, raw) once per value: metrics keyed NAME@V (with
    `unit` after V), raws keyed V."""
    metrics, raw = {}, {}
    for v in values:
        m, raw[str(v)] = run(v)
        metrics.update({f"{k}@{v}{unit}": x for k, x in m.items()})
    return metrics, raw


def matched(srv, p, rate, prefix, **kw):
    """The closed-loop load again at a fixed publish rate, the same for
    every server (like for like: a server that answers faster is not
    published harder). Its metrics, prefixed matched_, and its report."""
    r = run_sseload(srv, "fanout", prefix, events=p["events"],
                    size=p["size"], publishers=p.get("publishers", 1),
                    rate=rate, batch=200, **kw)
    # From each event's scheduled send time: a server that answers late
    # delays the next publish, and a user's event waits there too.
    lat = r["latency_from_schedule_ms"]
    return {"matched_latency_p50_ms": lat.get("p50"),
            "matched_latency_p99_ms": lat.get("p99"),
            "matched_sent_latency_p99_ms": r["latency_ms"].get("p99"),
            "matched_achieved_rate": r["publish"].get("achieved_rate"),
            "matched_exactly_once": deliveries_ok(r)}, r


def scen_burst(srv, p, tag):
    def one(n):
        r = run_sseload(srv, "fanout", f"{tag}b{n}-", subscribers=n,
                        channels=1, events=p["events"], size=p["size"],
                        publishers=1, batch=200)
        m = {"deliveries_per_s": r["deliveries"]["per_second"],
             "exactly_once": deliveries_ok(r),
             "publish_per_s": r["publish"]["per_second"],
             "latency_p50_ms": r["latency_ms"].get("p50"),
             "latency_p99_ms": r["latency_ms"].get("p99"),
             "head_before_event":
                 r["connect"].get("heads_before_first_event") == n}
        rate = p.get("matched_rate", {}).get(n)
        if rate:
            mm, r["matched"] = matched(srv, p, rate, f"{tag}m{n}-",
                                       subscribers=n, channels=1)
            m.update(mm)
        return m, r
    return each(p["subscribers"], one)


def paced(srv, p, n, prefix):
    """Paced fan-out: n subscribers on one channel, p["rate"] events/s."""
    events = int(p["rate"] * p["seconds"])
    r = run_sseload(srv, "fanout", prefix, subscribers=n, channels=1,
                    events=events, size=p["size"], publishers=1,
                    rate=p["rate"], batch=200)
    lat = r["latency_from_schedule_ms"]
    sent = r["latency_ms"]
    return {"sent_latency_p50_ms": sent.get("p50"),
            "sent_latency_p99_ms": sent.get("p99"),
            "latency_p50_ms": lat.get("p50"), "latency_p99_ms": lat.get("p99"),
            "latency_max_ms": lat.get("max"),
            "achieved_rate": r["publish"].get("achieved_rate"),
            "max_send_lag_ms": r["publish"]["send_lag_ms"].get("max"),
            "exactly_once": deliveries_ok(r)}, r


def scen_latency(srv, p, tag):
    return each(p["subscribers"],
                lambda n: paced(srv, p, n, f"{tag}l{n}-"))


def scen_after_burst(srv, p, tag):
    """A burst of p["burst"] events to 1,000 subscribers of one channel,
    then at once the paced run on another channel of the same server."""
    n = p["subscribers"]
    b = run_sseload(srv, "fanout", f"{tag}ab-", subscribers=n, channels=1,
                    events=p["burst"], size=p["size"], publishers=1,
                    batch=200)
    m, r = paced(srv, p, n, f"{tag}al-")
    m["burst_exactly_once"] = deliveries_ok(b)
    return m, {"burst": b, "paced": r}


def scen_sweep(srv, p, tag):
    """Publish response times, second by second, at p["rate"]/s over
    p["active"] channels: first on a fresh server, then beside
    p["channels"] idle channels holding one event each (half of them
    expire 5 s after it, during the measurement)."""
    events = int(p["rate"] * p["seconds"])
    active = dict(subscribers=0, channels=p["active"], events=events,
                  size=p["size"], publishers=1, rate=p["rate"])
    before = run_sseload(srv, "publish", f"{tag}s-", **active)
    half = p["channels"] // 2
    short = "/short/{ch}"
    fill = [run_sseload(srv, "publish", f"{tag}idle-", subscribers=0,
                        channels=half, events=half, size=p["size"],
                        publishers=4),
            run_sseload(srv, "publish", f"{tag}exp-", subscribers=0,
                        channels=half, events=half, size=p["size"],
                        publishers=4, pub_path=short)]
    after = run_sseload(srv, "publish", f"{tag}s-", **active)
    bs = before["publish"].get("response_by_second", [])
    as_ = after["publish"].get("response_by_second", [])
    n = p["channels"]
    m = {
        "response_p50_ms@few": before["publish"]["response_ms"].get("p50"),
        "response_p99_ms@few": before["publish"]["response_ms"].get("p99"),
        f"response_p50_ms@{n}ch": after["publish"]["response_ms"].get("p50"),
        f"response_p99_ms@{n}ch": after["publish"]["response_ms"].get("p99"),
        "worst_second_p99_ms@few": max((x["p99"] for x in bs), default=None),
        f"worst_second_p99_ms@{n}ch": max((x["p99"] for x in as_),
                                          default=None),
        f"response_max_ms@{n}ch": after["publish"]["response_ms"].get("max"),
        "all_accepted": all(r["publish"]["ok"] == r["events"] for r in
                            [before, after] + fill),
    }
    return m, {"before": before, "fill": fill, "after": after}


def scen_channels(srv, p, tag):
    r = run_sseload(srv, "fanout", f"{tag}c-", subscribers=p["subscribers"],
                    channels=p["channels"], events=p["events"],
                    size=p["size"], publishers=p["publishers"], batch=200)
    m = {"deliveries_per_s": r["deliveries"]["per_second"],
         "exactly_once": deliveries_ok(r),
         "publish_per_s": r["publish"]["per_second"],
         "latency_p50_ms": r["latency_ms"].get("p50"),
         "latency_p99_ms": r["latency_ms"].get("p99")}
    if p.get("matched_rate"):
        mm, r["matched"] = matched(srv, p, p["matched_rate"], f"{tag}mc-",
                                   subscribers=p["subscribers"],
                                   channels=p["channels"])
        m.update(mm)
    return m, r


def scen_memory(srv, p, tag):
    n = p["subscribers"]
    args = sseload_args(srv, "idle", f"{tag}m-", subscribers=n,
                        channels=p["channels"], timeout=120, batch=200)
    gens, idle, loaded = hold(srv, [args], 180, "sseload idle")
    ready = gens.ready[0]
    gens.go()
    r = gens.reports(120)[0]
    time.sleep(1.0)
    after = srv.memory()
    per = lambda k: (loaded[k] - idle[k]) * 1024 / max(ready, 1)
    metrics = {
        "idle_rss_mib": idle["rss_kb"] / 1024,
        "loaded_rss_mib": loaded["rss_kb"] / 1024,
        "bytes_per_subscriber_rss": per("rss_kb"),
        "bytes_per_subscriber_pss": per("pss_kb"),
        "subscribers_held": ready,
        "rss_after_disconnect_mib": after["rss_kb"] / 1024,
    }
    if idle["zone_used_bytes"] is not None and \
            loaded["zone_used_bytes"] is not None:
        metrics["zone_used_idle_kib"] = idle["zone_used_bytes"] / 1024
        metrics["zone_used_loaded_kib"] = loaded["zone_used_bytes"] / 1024
        metrics["zone_bytes_per_subscriber"] = (
            loaded["zone_used_bytes"] - idle["zone_used_bytes"]) / max(ready, 1)
    return metrics, {"idle": idle, "loaded": loaded, "after": after,
                     "sseload": r}


def scen_publish(srv, p, tag):
    def one(size):
        r = run_sseload(srv, "publish", f"{tag}p{size}-", subscribers=0,
                        channels=1, events=p["events"][size], size=size,
                        publishers=p["publishers"])
        pub = r["publish"]
        return {"publishes_per_s": pub["per_second"],
                "all_accepted": (pub["ok"] == p["events"][size] and
                                 pub["errors"] == 0),
                "response_p99_ms": pub["response_ms"].get("p99")}, r
    return each(p["sizes"], one, "B")


def scen_resume(srv, p, tag):
    r = run_sseload(srv, "resume", f"{tag}r-", subscribers=p["subscribers"],
                    events=p["buffered"], resume_back=p["behind"],
                    batch=p["subscribers"])
    res = r["resume"]
    return {"catch_up_s": res["catch_up_s"],
            "catch_up_p50_ms": res["catch_up_ms"].get("p50"),
            "exactly_once": deliveries_ok(r) and res["ids_recorded"]}, r


def fanned_out(outs):
    """Figures of sseload processes that fanned one load out together:
    from the first publish to the last delivery of any of them (s), the
    deliveries in all and per second, latency p50 (the median of their
    p50s) and p99 (the highest of their p99s), and whether every one got
    every event exactly once, in order."""
    d = [o["deliveries"] for o in outs]
    first = min((int(x["first_publish_ns"]) for x in d
                 if int(x.get("first_publish_ns") or 0)), default=0)
    last = max(int(x.get("last_delivery_ns") or 0) for x in d)
    unique = sum(x["unique"] for x in d)
    span = (last - first) / 1e9 if first and last > first else None
    return {
        "exactly_once": all(deliveries_ok(o) for o in outs),
        "last_delivery_s": span,
        "unique": unique,
        "deliveries_per_s": unique / span if span else None,
        "latency_p50_ms": statistics.median(
            o["latency_ms"].get("p50") or 0 for o in outs),
        "latency_p99_ms": max(o["latency_ms"].get("p99") or 0 for o in outs),
    }


def scen_scale(srv, p, tag):
    """p["subscribers"] on one channel held by p["generators"] sseload
    processes (each binding its sockets to p["addresses"] addresses of its
    own in 127.0.0.x); once all are connected, the first publishes
    p["events"] events as fast as answered and every process checks that
    each of its subscribers got all of them, in order."""
    n, g = p["subscribers"], p["generators"]
    timeout = 300
    arg_lists = [sseload_args(
        srv, "fanout", f"{tag}z-", subscribers=n // g, channels=1,
        events=p["events"], size=p["size"], publishers=1, batch=500,
        timeout=timeout, src_base=2 + i * p["addresses"],
        src_count=p["addresses"]) +
        ["--no-warmup", "--wait-stdin" if i == 0 else "--no-publish"]
        for i in range(g)]
    gens, idle, loaded = hold(srv, arg_lists, timeout, "the generators")
    before = srv.cpu()
    gens.go(gens.procs[:1])  # the first publishes; the others only receive
    outs = gens.reports(timeout * 2)
    after = srv.cpu()
    held = sum(gens.ready)
    f = fanned_out(outs)
    unique = f.pop("unique")
    cpu = (after["user"] + after["sys"] - before["user"] - before["sys"])
    return {
        "subscribers_held": held,
        **f,
        "bytes_per_subscriber_rss": (loaded["rss_kb"] - idle["rss_kb"]) *
        1024 / max(held, 1),
        "cpu_us_per_delivery": cpu * 1e6 / unique if unique else None,
    }, {"idle": idle, "loaded": loaded, "sseload": outs}


def cpu_per_op(r, ops):
    cpu = r.get("server_cpu_s")
    if not cpu or not ops:
        return None
    return (cpu["user"] + cpu["sys"]) * 1e6 / ops


def add_cpu_metrics(name, metrics, raw):
    """Server CPU (user + sys of master and workers) per delivery or per
    publish: less sensitive to a busy machine than rates are."""
    if name in ("burst", "publish"):
        for k, r in raw.items():
            if name == "burst":
                metrics[f"cpu_us_per_delivery@{k}"] = cpu_per_op(
                    r, r["deliveries"]["unique"])
            else:
                metrics[f"cpu_us_per_publish@{k}B"] = cpu_per_op(
                    r, r["publish"]["ok"])
    elif name == "latency":
        for k, r in raw.items():
            metrics[f"cpu_us_per_delivery@{k}"] = cpu_per_op(
                r, r["deliveries"]["unique"])
    elif name == "after_burst":
        metrics["cpu_us_per_delivery"] = cpu_per_op(
            raw["paced"], raw["paced"]["deliveries"]["unique"])
    elif name in ("channels", "resume"):
        metrics["cpu_us_per_delivery"] = cpu_per_op(
            raw, raw["deliveries"]["unique"])


SCENARIOS = {"burst": scen_burst, "latency": scen_latency,
             "scale": scen_scale,
             "after_burst": scen_after_burst, "sweep": scen_sweep,
             "channels": scen_channels, "memory": scen_memory,
             "publish": scen_publish, "resume": scen_resume}

# For the tables: label, unit/format, direction (+1 higher is better,
# -1 lower is better, 0 a yes/no check).
METRIC_INFO = {
    "deliveries_per_s": ("deliveries/s", "{:,.0f}", +1),
    "exactly_once": ("every event exactly once, in order", None, 0),
    "head_before_event": ("response head (200) sent before the first event",
                          None, 0),
    "publish_per_s": ("publishes/s during the burst", "{:,.0f}", +1),
    "latency_p50_ms": ("latency p50 (ms)", "{:.2f}", -1),
    "sent_latency_p50_ms": ("latency p50 from the actual send (ms)",
                            "{:.2f}", -1),
    "sent_latency_p99_ms": ("latency p99 from the actual send (ms)",
                            "{:.2f}", -1),
    "achieved_rate": ("events/s the publisher could send", "{:.1f}", +1),
    "max_send_lag_ms": ("publisher held back behind schedule, max (ms)",
                        "{:.1f}", -1),
    "latency_p99_ms": ("latency p99 (ms)", "{:.2f}", -1),
    "latency_max_ms": ("latency max (ms)", "{:.2f}", -1),
    "matched_latency_p50_ms": ("same publish rate for all: latency p50 "
                               "from the schedule (ms)", "{:.2f}", -1),
    "matched_latency_p99_ms": ("same publish rate for all: latency p99 "
                               "from the schedule (ms)", "{:.2f}", -1),
    "matched_sent_latency_p99_ms": ("same publish rate for all: latency "
                                    "p99 from the actual send (ms)",
                                    "{:.2f}", -1),
    "matched_achieved_rate": ("same publish rate for all: events/s sent",
                              "{:,.0f}", 0),
    "matched_exactly_once": ("same publish rate for all: every event "
                             "exactly once, in order", None, 0),
    "idle_rss_mib": ("RSS idle, all processes (MiB)", "{:.1f}", -1),
    "loaded_rss_mib": ("RSS with the subscribers (MiB)", "{:.1f}", -1),
    "bytes_per_subscriber_rss": ("bytes per subscriber (RSS)", "{:,.0f}", -1),
    "bytes_per_subscriber_pss": ("bytes per subscriber (PSS)", "{:,.0f}", -1),
    "subscribers_held": ("subscribers held", "{:,.0f}", 0),
    "rss_after_disconnect_mib": ("RSS after they left (MiB)", "{:.1f}", -1),
    "zone_used_idle_kib": ("shared zone used, idle (KiB, each module's "
                           "own figure)", "{:,.0f}", 0),
    "zone_used_loaded_kib": ("shared zone used, loaded (KiB, each "
                             "module's own figure)", "{:,.0f}", 0),
    "zone_bytes_per_subscriber": ("zone bytes per subscriber", "{:,.1f}", -1),
    "publishes_per_s": ("publishes/s", "{:,.0f}", +1),
    "cpu_us_per_delivery": ("nginx CPU per delivery (us, user+sys)",
                            "{:.2f}", -1),
    "cpu_us_per_publish": ("nginx CPU per publish (us, user+sys)",
                           "{:.1f}", -1),
    "all_accepted": ("every publish accepted (2xx)", None, 0),
    "response_p99_ms": ("publish response p99 (ms)", "{:.2f}", -1),
    "response_p50_ms": ("publish response p50 (ms)", "{:.2f}", -1),
    "response_max_ms": ("publish response max (ms)", "{:.2f}", -1),
    "worst_second_p99_ms": ("publish response p99 of the worst second (ms)",
                            "{:.2f}", -1),
    "burst_exactly_once": ("the burst: every event exactly once, in order",
                           None, 0),
    "last_delivery_s": ("time from the first publish to the last delivery "
                        "(s)", "{:.3f}", -1),
    "catch_up_s": ("time until all caught up (s)", "{:.3f}", -1),
    "catch_up_p50_ms": ("median subscriber caught up after (ms)", "{:.1f}", -1),
}

# The metrics each chart shows.
CHART = {
    "burst": ["deliveries_per_s", "cpu_us_per_delivery"],
    "latency": ["sent_latency_p50_ms", "sent_latency_p99_ms",
                "cpu_us_per_delivery"],
    "channels": ["deliveries_per_s", "cpu_us_per_delivery"],
    "memory": ["bytes_per_subscriber_rss", "bytes_per_subscriber_pss"],
    "publish": ["publishes_per_s", "cpu_us_per_publish"],
    "resume": ["catch_up_s", "cpu_us_per_delivery"],
    "after_burst": ["sent_latency_p50_ms", "sent_latency_p99_ms"],
    "sweep": ["response_p99_ms", "worst_second_p99_ms"],
    "scale": ["last_delivery_s", "deliveries_per_s", "latency_p99_ms",
              "bytes_per_subscriber_rss"],
}


def split_key(key):
    base, _, at = key.partition("@")
    return base, at


def metric_label(key, p):
    base, at = split_key(key)
    label = METRIC_INFO.get(base, (base, None, 0))[0]
    if at:
        if at == "few":
            at = "few channels"
        elif at.endswith("ch"):
            at = f"beside {int(at[:-2]):,} channels"
        elif at.endswith("B"):
            size = int(at[:-1])
            at = f"{size // 1024} KB bodies" if size >= 1024 else \
                f"{size} B bodies"
        else:
            at = f"{int(at):,} subscribers"
        label = f"{label}, {at}"
    return label


def fmt(key, v):
    base, _ = split_key(key)
    f = METRIC_INFO.get(base, (None, "{:.3g}", 0))[1]
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "**NO**"
    return f.format(v) if f else str(v)


def summarize(sc):
    """Per server: the median of each metric over the repeated runs, and
    its spread (min, max)."""
    sc["metrics"] = {kd: median_metrics([r["metrics"] for r in runs])
                     for kd, runs in sc["runs"].items()}
    sc["spread"] = {kd: spread_metrics([r["metrics"] for r in runs])
                    for kd, runs in sc["runs"].items()}


def spread_metrics(runs):
    out = {}
    for k in runs[0]:
        nums = [r.get(k) for r in runs]
        nums = [v for v in nums if isinstance(v, (int, float)) and
                not isinstance(v, bool)]
        if nums:
            out[k] = [min(nums), max(nums)]
    return out


def median_metrics(runs):
    """Per metric, the median over repeated runs (booleans: all must hold)."""
    out = {}
    for k in runs[0]:
        vals = [r.get(k) for r in runs]
        if any(isinstance(v, bool) for v in vals):
            out[k] = all(bool(v) for v in vals)
        else:
            nums = [v for v in vals if isinstance(v, (int, float))]
            out[k] = statistics.median(nums) if nums else None
    return out


# ---------------------------------------------------------------- machine

def machine_info():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True,
                             text=True).stderr.strip()
    nchan_v = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"],
        capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "nginx": nginx_v.replace("nginx version: ", ""),
        "nchan": nchan_v or "unknown",
    }


def git_describe():
    """The checkout the module was built from (read-only git query)."""
    try:
        p = subprocess.run(["git", "-C", str(ROOT), "describe", "--always",
                            "--dirty"], capture_output=True, text=True,
                           timeout=10)
        return p.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def status_supported(kind, module, tmp):
    """Whether the status location's directive exists in this build."""
    d = Path(tmp) / f"probe-{kind}"
    srv = Server(kind, d, module, True)
    srv.sub_port, srv.pub_port = free_port(), free_port()
    srv.conf.write_text(srv.render())
    p = srv.run("-t")
    if p.returncode != 0 and "unknown directive" not in p.stderr:
        raise RuntimeError(f"nginx -t failed for {kind}: {p.stderr}")
    return p.returncode == 0


# ---------------------------------------------------------------- output

def write_charts(results, outdir, stamp):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is missing (apt-get install python3-matplotlib): "
            "no charts")
        return {}
    charts = {}
    colors = {"ours": "#2a7ab9", "nchan": "#c8553d", "floor": "#888888"}
    for name, sc in results["scenarios"].items():
        if "metrics" not in sc:
            continue
        keys = [k for k in sc["metrics"]["ours"]
                if split_key(k)[0] in CHART.get(name, [])]
        kinds = list(sc["metrics"])
        keys = [k for k in keys
                if all(isinstance(sc["metrics"][kd].get(k), (int, float))
                       for kd in kinds)]
        if not keys:
            continue
        fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys) + 1,
                                                         4.0), squeeze=False)
        for ax, k in zip(axes[0], keys):
            ks = [kd for kd in kinds if isinstance(
                sc["metrics"][kd].get(k), (int, float))]
            vals = [sc["metrics"][kd][k] for kd in ks]
            bars = ax.bar([LABEL[kd].split(" ")[0] for kd in ks], vals,
                          color=[colors[kd] for kd in ks])
            sp = [sc.get("spread", {}).get(kd, {}).get(k) for kd in ks]
            if all(sp):  # the spread of repeated runs
                ax.errorbar(range(len(ks)), vals, fmt="none", ecolor="black",
                            capsize=4, yerr=[[v - lo for v, (lo, _) in
                                              zip(vals, sp)],
                                             [hi - v for v, (_, hi) in
                                              zip(vals, sp)]])
            ax.bar_label(bars, labels=[fmt(k, v) for v in vals], fontsize=8)
            base = split_key(k)[0]
            better = METRIC_INFO.get(base, ("", "", 0))[2]
            ax.set_title(textwrap.fill(metric_label(k, None), 34) +
                         ("\n(higher is better)" if better > 0 else
                          "\n(lower is better)" if better < 0 else ""),
                         fontsize=9)
            ax.tick_params(axis="x", labelsize=8)
            ax.margins(y=0.15)
        fig.suptitle(TITLES[name], fontsize=10)
        fig.tight_layout()
        path = outdir / f"{stamp}-{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        charts[name] = path
    return charts


def matched_text(p, rate):
    """describe(): the rate-matched rows of the burst and many-channel
    scenarios."""
    if not rate:
        return ""
    return (" Closed loop, a server that answers sooner is published "
            "harder, so its latency is not like for like; the rows \"same "
            "publish rate for all\" publish the same events again at a "
            f"fixed rate ({rate}, a bit under nchan's closed-loop rate), "
            "the same for every server: those compare like for like. "
            "Their latency counts from each event's scheduled send time "
            "(a publish answered late holds the next one back, and an "
            "event waits there too); closed-loop latency is from the "
            "actual send.")


def describe(name, p):
    if name == "burst":
        subs = " and ".join(f"{n:,}" for n in p["subscribers"])
        return (f"{subs} subscribers on one channel; {p['events']} events of "
                f"{p['size']} bytes, one keep-alive publisher connection, "
                "each publish sent when the previous one is answered. "
                "Deliveries/s = events received by all subscribers / time "
                "from the first publish to the last delivery." +
                matched_text(p, p.get("matched_rate") and " and ".join(
                    f"{r:,} events/s at {int(n):,} subscribers"
                    for n, r in p["matched_rate"].items())))
    if name == "latency":
        subs = " and ".join(f"{n:,}" for n in p["subscribers"])
        return (f"{subs} subscribers on one channel; "
                f"{p['rate']} events/s of {p['size']} bytes for "
                f"{p['seconds']} s, one keep-alive publisher connection. "
                "Latency = receive time - the time the publish was written "
                "(CLOCK_MONOTONIC, carried in the body), over every "
                "delivery. The latency from each event's scheduled send "
                "time (a server that answers a publish late delays the "
                "next one, and that wait counts) and how far the publisher "
                "fell behind are shown too.")
    if name == "after_burst":
        return (f"{p['burst']} events published as fast as answered to "
                f"{p['subscribers']:,} subscribers of one channel; right "
                f"after, {p['subscribers']:,} other subscribers on another "
                f"channel of the same server get {p['rate']} events/s for "
                f"{p['seconds']} s (latency as in 2).")
    if name == "scale":
        return (f"{p['subscribers']:,} subscribers on one channel of one "
                f"nginx with {p['workers']} workers (`listen ... reuseport` "
                f"spreads them; 20,000 open files per worker), held by "
                f"{p['generators']} load-generator processes whose sockets "
                f"are bound to {p['addresses']} addresses each in "
                "127.0.0.x; once all are connected, "
                f"{p['events']} events of {p['size']} bytes are published "
                "as fast as answered. Latency p50 is the median of the "
                "generators' p50s, p99 the highest of their p99s; bytes per "
                "subscriber = RSS growth of all processes / subscribers.")
    if name == "sweep":
        return (f"{p['rate']} publishes/s for {p['seconds']} s over "
                f"{p['active']} channels, one keep-alive connection, no "
                "subscribers: first on a fresh server, then again after "
                f"{p['channels']:,} more channels got one event each (half "
                "with a 5 s lifetime, so that they expire while it is "
                "measured). The publish response time is the time from "
                "writing the request to reading the answer; the worst "
                "second is the highest p99 of any one-second window. "
                "Issue 8 item 12: work proportional to all channels under "
                "the zone lock (the expiry sweep, status counts) would show "
                "here as a worse second.")
    if name == "channels":
        return (f"{p['subscribers']:,} subscribers on {p['channels']:,} "
                f"channels; {p['events']:,} events of {p['size']} bytes "
                f"round-robin over the channels through {p['publishers']} "
                "keep-alive publisher connections (a channel always on the "
                "same connection, so its order is defined)." +
                matched_text(p, p.get("matched_rate") and
                             f"{p['matched_rate']:,} events/s"))
    if name == "memory":
        return (f"RSS and PSS of master + workers (from /proc) with nginx "
                f"idle, then holding {p['subscribers']:,} idle subscribers "
                f"on {p['channels']} channel(s). Bytes per subscriber = "
                "(loaded - idle) / subscribers. RSS counts shared-memory "
                "pages once per process that touched them; PSS splits them. "
                "Zone use is what each module reports (this module: "
                "`sse_status` bytes_used, which includes the slab "
                "allocator's page table; nchan: `nchan_stub_status` "
                "\"shared memory used\"), so only its growth per subscriber "
                "compares like with like.")
    if name == "publish":
        sizes = ", ".join(f"{p['events'][str(s)]:,} x {s} B" for s in p["sizes"])
        return (f"POSTs to one channel with no subscribers over "
                f"{p['publishers']} concurrent keep-alive connections "
                f"({sizes}); each connection sends when answered.")
    if name == "resume":
        return (f"{p['buffered']:,} events published to one channel (buffer "
                f"1000); a recorder subscriber notes each event's id. Then "
                f"{p['subscribers']:,} subscribers connect at once with "
                f"Last-Event-ID = the id {p['behind']} events before the "
                "end, in each server's own id format. Time from the first "
                "connect until every subscriber has all "
                f"{p['behind']} events.")
    if name in DESCRIBE:
        return DESCRIBE[name](p)
    return ""


# The goals set for this module (issue 4), checked against this run.
TARGETS = [
    ("burst", "deliveries_per_s@5000", ">=", 5.0,
     "burst fan-out at 5,000 subscribers: deliveries/s at least 5x nchan's"),
    ("burst", "latency_p99_ms@1000", "<=", 1.0,
     "burst at 1,000 subscribers: latency p99 no worse than nchan's"),
    ("burst", "matched_latency_p99_ms@1000", "<=", 1.0,
     "the same, like for like: one fixed publish rate for both, latency "
     "from the schedule"),
    ("channels", "latency_p99_ms", "<=", 1.0,
     "many channels: latency p99 no worse than nchan's"),
    ("channels", "matched_latency_p99_ms", "<=", 1.0,
     "the same, like for like: one fixed publish rate for both, latency "
     "from the schedule"),
    ("latency", "sent_latency_p99_ms@5000", "<=", 1.0,
     "paced latency p99 at 5,000 subscribers no worse than nchan's"),
    ("latency", "sent_latency_p50_ms@5000", "<=", 1.0,
     "paced latency p50 at 5,000 subscribers no worse than nchan's"),
    ("memory", "bytes_per_subscriber_rss", "<=", 1.0,
     "bytes per idle subscriber no more than nchan's"),
    ("latency", "cpu_us_per_delivery@1000", "<=", 0.5,
     "nginx CPU per delivery, paced, 1,000 subscribers: at most half of "
     "nchan's"),
    ("latency", "cpu_us_per_delivery@5000", "<=", 0.5,
     "nginx CPU per delivery, paced, 5,000 subscribers: at most half of "
     "nchan's"),
    ("scale", "deliveries_per_s", ">=", 1.0,
     "50,000 subscribers: deliveries/s at least nchan's"),
    ("publish", "publishes_per_s@64B", ">=", 1.0,
     "publish rate (64 B) at least nchan's"),
    ("publish", "publishes_per_s@16384B", ">=", 1.0,
     "publish rate (16 KB) at least nchan's"),
]


# Against the floor (issue 11): ours / floor at most this.
FLOOR_TARGETS = [
    ("latency", "sent_latency_p50_ms@1000", 1.2,
     "paced latency p50 at 1,000 subscribers within 1.2x of the floor"),
    ("latency", "sent_latency_p99_ms@1000", 1.2,
     "paced latency p99 at 1,000 subscribers within 1.2x of the floor"),
    ("latency", "sent_latency_p50_ms@5000", 1.2,
     "paced latency p50 at 5,000 subscribers within 1.2x of the floor"),
    ("latency", "sent_latency_p99_ms@5000", 1.2,
     "paced latency p99 at 5,000 subscribers within 1.2x of the floor"),
]


def pace_note(sc, key, other):
    """For a paced latency key: a note when `other` could not publish at
    the offered rate (fewer events/s is less load: its latency is not
    like for like)."""
    base, at = split_key(key)
    if "latency" not in base or sc is None:
        return ""
    rate = sc.get("params", {}).get("rate")
    ak = "achieved_rate" + (f"@{at}" if at else "")
    got = sc.get("metrics", {}).get(other, {}).get(ak)
    ours = sc.get("metrics", {}).get("ours", {}).get(ak)
    if rate and isinstance(got, (int, float)) and got < 0.95 * rate and \
            isinstance(ours, (int, float)) and ours >= 0.95 * rate:
        return (f" (not like for like: {LABEL[other].split(' ')[0]}'s "
                f"publisher managed {got:.1f} of {rate} events/s, ours "
                f"{ours:.1f})")
    return ""


def loop_note(sc, key, other):
    """For a closed-loop latency key of the burst or many-channel
    scenario: how much harder that server was published; for a
    rate-matched one, a note when a server fell short of the rate."""
    base, at = split_key(key)
    mets = sc.get("metrics", {}) if sc else {}
    suffix = f"@{at}" if at else ""
    if base == "latency_p99_ms" and "matched_rate" in sc.get("params", {}):
        r = ratio(mets.get("ours", {}).get("publish_per_s" + suffix),
                  mets.get(other, {}).get("publish_per_s" + suffix))
        if r:
            return (f" (closed loop, not like for like: ours was published "
                    f"{r:.2f}x as fast)")
    if base == "matched_latency_p99_ms":
        rate = sc["params"].get("matched_rate")
        rate = rate.get(at) if isinstance(rate, dict) else rate
        short = [k for k in ("ours", other) if isinstance(
            mets.get(k, {}).get("matched_achieved_rate" + suffix),
            (int, float)) and mets[k]["matched_achieved_rate" + suffix] <
            0.95 * rate]
        if rate and short:
            return (f" (not like for like: {' and '.join(short)} fell "
                    f"short of {rate:,} events/s)")
    return ""


def ratio(a, b):
    """a / b when both are figures (not yes/no checks) and b is not 0."""
    if isinstance(a, bool) or not isinstance(a, (int, float)) or \
            not isinstance(b, (int, float)) or not b:
        return None
    return a / b


def target_row(results, name, key, other, op, want, text, note=""):
    """A row of the targets table: ours / `other` for `key`, met or not."""
    sc = results["scenarios"].get(name) or {}
    mets = sc.get("metrics", {})
    r = ratio(mets.get("ours", {}).get(key), mets.get(other, {}).get(key))
    if r is None:
        return f"| {text} | not measured | |"
    met = r >= want if op == ">=" else r <= want
    note += loop_note(sc, key, other)
    return (f"| {text} | {r:.2f}x{note}{pace_note(sc, key, other)} | "
            f"{'yes' if met else '**no**'} |")


def absolute_row(text, v, figure, met):
    """A row of the targets table for one of this module's own figures:
    `figure` formats it, met(v) says whether the target is met; no row
    when it was not measured."""
    if not isinstance(v, (int, float)):
        return []
    return [f"| {text} | {figure.format(v)} | "
            f"{'yes' if met(v) else '**no**'} |"]


def targets_table(results):
    lines = ["## Targets", "",
             "| target | ratio in this run | met |", "|---|--:|:-:|"]
    lines += [target_row(results, name, key, "nchan", op, want, text)
              for name, key, op, want, text in TARGETS]
    # Absolute (issue 11): bytes per idle subscriber, all processes.
    sc = results["scenarios"].get("memory") or {}
    lines += absolute_row(
        "bytes per idle subscriber (RSS, all processes) at most 5 KB",
        sc.get("metrics", {}).get("ours", {}).get("bytes_per_subscriber_rss"),
        "{:,.0f} bytes", lambda v: v <= 5120)
    lines += [target_row(results, name, key, "floor", "<=", want, text,
                         " (ours / floor)")
              for name, key, want, text in FLOOR_TARGETS]
    return lines + [""]


def cell(key, sc, kd, repeat):
    """The median, and with repeated runs its spread: "12.3 (11.0-14.1)"."""
    v = sc["metrics"].get(kd, {}).get(key)
    out = fmt(key, v)
    sp = sc.get("spread", {}).get(kd, {}).get(key)
    if repeat > 1 and sp and not isinstance(v, bool) and sp[0] != sp[1]:
        out += f" ({fmt(key, sp[0])}-{fmt(key, sp[1])})"
    return out


def ratio_text(key, a, b):
    base, _ = split_key(key)
    better = METRIC_INFO.get(base, ("", "", 0))[2]
    r = ratio(a, b)
    if not better or r is None:
        return ""
    good = (a >= b) if better > 0 else (a <= b)
    return f"{r:.2f}x" + (" (better)" if good else " (worse)")


def scenario_table(sc, repeat):
    """One row per metric: this module, nchan (and the floor), ratios."""
    kinds = list(sc["metrics"])
    floor = "floor" in kinds
    head = "| metric | ngx_http_sse_module | nchan |"
    rule = "|---|--:|--:|"
    if floor:
        head += " floor |"
        rule += "--:|"
    head += " ours / nchan |" + (" ours / floor |" if floor else "")
    rule += "--:|" + ("--:|" if floor else "")
    lines = [head, rule]
    mo, mn = sc["metrics"].get("ours", {}), sc["metrics"].get("nchan", {})
    for k in mo:
        base, _ = split_key(k)
        better = METRIC_INFO.get(base, ("", "", 0))[2]
        arrow = " (higher is better)" if better > 0 else \
            " (lower is better)" if better < 0 else ""
        row = (f"| {metric_label(k, sc['params'])}{arrow} | "
               f"{cell(k, sc, 'ours', repeat)} | "
               f"{cell(k, sc, 'nchan', repeat) if mn else 'n/a'} |")
        if floor:
            row += f" {cell(k, sc, 'floor', repeat)} |"
        row += f" {ratio_text(k, mo.get(k), mn.get(k))} |"
        if floor:
            row += f" {ratio_text(k, mo.get(k), sc['metrics']['floor'].get(k))} |"
        lines.append(row)
    return lines


def write_markdown(results, charts, path):
    m = results["machine"]
    lines = [
        "# Benchmarks: ngx_http_sse_module vs nchan",
        "",
        "Generated by `bench/run.py` (`make bench`) on "
        f"{results['date']}; every figure below comes from that run "
        f"(raw data: `{results['json']}`).",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {m['nproc']} CPUs, {m['cpu']}, {m['memory_gib']} GiB "
        f"memory, Linux {m['kernel']} |",
        f"| nginx | {m['nginx']} (`{NGINX}`), 2 workers, the same binary "
        "for both |",
        f"| nchan | {m['nchan']} (`{NCHAN_MODULE}`) |",
        f"| ngx_http_sse_module | `build/ngx_http_sse_module.so`, sha256 "
        f"{results['module_sha256'][:12]}, built from "
        f"{results.get('git') or 'an unknown checkout'} |",
        f"| load generator | `build/sseload` (bench/sseload/), one "
        "epoll thread on the same machine |",
        "| floor | `build/floor` (bench/floor.cpp): one thread, one epoll "
        "loop, one `write()` per subscriber per event, nothing else |",
        f"| scale | {results['scale']}, {results['repeat']} run(s) per "
        "server and scenario: the median, then (min-max) of the runs |",
        f"| load average | {results['loadavg_start']} at start, "
        f"{results['loadavg_end']} at end |",
        "",
        "Both servers are configured alike: same nginx binary, 2 worker "
        "processes, 20,000 worker connections and `worker_rlimit_nofile`, "
        "a 128 MiB shared zone, 1,000 messages buffered per channel with a "
        "1 h lifetime, heartbeats/pings off, a new subscriber starts with "
        "the next event, `listen ... backlog=4096`, the same keep-alive "
        "and body-buffer settings. nchan subscribers use its EventSource "
        "mode (`Accept: text/event-stream`). Each scenario starts a fresh "
        "nginx for each module; this module runs first, nchan right after.",
        "",
        "The load generator and both nginx workers share the machine's "
        "CPUs (the generator itself spends about as much CPU per delivery "
        "as the server), and other work on the machine shows in the load "
        "average above, so rates move from run to run; the ratio is the "
        "figure to read, and nginx CPU per delivery or publish (user + "
        "sys of master and workers, from /proc, over the run) is the "
        "steadiest of them. Ratio = this module / nchan (and / the floor "
        "where it ran); `--repeat N` reports the median of N runs and, "
        "in brackets, the lowest and highest of them; the charts show "
        "the same spread as error bars. The floor runs in the scenarios "
        "that measure delivery latency, under the same load generator, "
        "as the reference line: what any server on this machine pays "
        "for the sockets alone.",
        "",
    ]
    for note in results.get("notes", []):  # added to a run by hand
        lines += [f"Note: {note}.", ""]
    lines += targets_table(results)
    for name in results["order"]:
        sc = results["scenarios"][name]
        lines += [f"## {TITLES[name]}", "", describe(name, sc["params"]), ""]
        if "error" in sc:
            lines += [f"Not measured: `{sc['error']}`", ""]
            continue
        lines += scenario_table(sc, results.get("repeat", 1))
        lines.append("")
        probs = {kd: sc.get("log_problems", {}).get(kd) for kd in sc["runs"]}
        for kd in sc["runs"]:
            if probs[kd]:
                lines += [f"{LABEL[kd]} error.log had: `{probs[kd][0]}`"
                          + (f" (and {len(probs[kd]) - 1} more)"
                             if len(probs[kd]) > 1 else ""), ""]
        if name in charts:
            rel = os.path.relpath(charts[name], path.parent)
            lines += [f"![{name}]({rel})", ""]
    # The analysis that figures alone do not give (where the bytes go, what
    # perf showed), kept by hand in bench/findings.md and carried along.
    findings = BENCH / "findings.md"
    if findings.is_file():
        lines += ["", findings.read_text().rstrip(), ""]
    path.write_text("\n".join(lines))


def print_summary(results):
    for name in results["order"]:
        sc = results["scenarios"][name]
        print(f"== {name}")
        if "error" in sc:
            print(f"   error: {sc['error']}")
            continue
        mo, mn = sc["metrics"]["ours"], sc["metrics"].get("nchan", {})
        mf = sc["metrics"].get("floor", {})
        for k in mo:
            a, b = mo.get(k), mn.get(k)
            r = ratio(a, b)
            print(f"   {k:32} ours {fmt(k, a):>12}   nchan {fmt(k, b):>12}"
                  f"   {'' if r is None else f'{r:.2f}x'}" +
                  (f"   floor {fmt(k, mf.get(k)):>10}" if mf else ""))


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="full")
    ap.add_argument("--tiny", action="store_true",
                    help="10 subscribers, 10 events: burst (with the floor) "
                         "and a 20-subscriber scale run; results to "
                         "a temporary directory unless --results is given, "
                         "no BENCHMARKS.md unless --markdown is given")
    ap.add_argument("--only", help="comma-separated scenarios: " +
                    ",".join(ORDER))
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per module and scenario (median reported)")
    ap.add_argument("--results", help="directory for the JSON and charts "
                    "(default bench/results)")
    ap.add_argument("--markdown", help="where to write the report "
                    "(default BENCHMARKS.md at the repository root)")
    ap.add_argument("--no-markdown", action="store_true")
    ap.add_argument("--servers", default="ours,nchan,floor",
                    help="which servers to run (a quick A/B of two builds: "
                         "--servers ours,floor --module OTHER.so)")
    ap.add_argument("--module", default=str(MODULE),
                    help="the ngx_http_sse_module .so to test")
    ap.add_argument("--render", metavar="JSON",
                    help="only redraw the charts and the report from a "
                         "results file of an earlier run")
    args = ap.parse_args()
    if args.render:
        src = Path(args.render)
        results = json.loads(src.read_text())
        for name, sc in results["scenarios"].items():
            if "error" in sc:
                continue
            for kd in sc["runs"]:
                for run in sc["runs"][kd]:
                    add_cpu_metrics(name, run["metrics"], run["raw"])
            summarize(sc)
        src.write_text(json.dumps(results, indent=1, default=str) + "\n")
        charts = write_charts(results, src.parent, results["stamp"])
        md = None if args.no_markdown else Path(args.markdown) \
            if args.markdown else ROOT / "BENCHMARKS.md"
        if md is not None:
            write_markdown(results, charts, md)
            log(f"wrote {md}")
        print_summary(results)
        return 0
    if args.tiny:
        args.scale = "tiny"
    SERVERS.intersection_update(args.servers.split(","))
    scale = SCALES[args.scale]
    order = [s for s in ORDER if s in scale]
    if args.only:
        want = args.only.split(",")
        bad = [w for w in want if w not in ORDER]
        if bad:
            ap.error(f"unknown scenario(s): {bad}")
        order = [s for s in order if s in want]

    tmp = Path(tempfile.mkdtemp(prefix="sse-bench-"))
    work = tmp / "work"  # nginx prefixes; removed at the end
    work.mkdir()

    def cleanup():
        shutil.rmtree(work, ignore_errors=True)
        if tmp.exists() and not any(tmp.iterdir()):
            tmp.rmdir()
    atexit.register(cleanup)
    if args.results:
        outdir = Path(args.results)
    elif args.scale == "tiny":
        outdir = tmp / "results"
    else:
        outdir = BENCH / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    if args.no_markdown:
        md = None
    elif args.markdown:
        md = Path(args.markdown)
    else:
        md = None if args.scale == "tiny" else ROOT / "BENCHMARKS.md"

    module_src = Path(args.module)
    if not module_src.is_file():
        sys.exit(f"{module_src} is missing: run `make build` first")
    if not NCHAN_MODULE.is_file():
        sys.exit(f"{NCHAN_MODULE} is missing: apt-get install "
                 "libnginx-mod-nchan")
    build_sseload()
    # A private copy: a rebuild during the run must not change (or crash)
    # the module nginx has mapped.
    module_copy = work / "ngx_http_sse_module.so"
    shutil.copy2(module_src, module_copy)
    modules = {"ours": module_copy, "nchan": NCHAN_MODULE}
    status_ok = {kd: status_supported(kd, modules[kd], work) for kd in KINDS}

    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    json_path = outdir / f"{stamp}.json"
    results = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "stamp": stamp,
        "scale": args.scale,
        "repeat": args.repeat,
        "machine": machine_info(),
        "module_sha256": sha256(module_copy),
        "git": git_describe(),
        "module_path": str(module_src),
        "status_location": status_ok,
        "loadavg_start": loadavg(),
        "order": order,
        "json": os.path.relpath(json_path, ROOT)
        if str(json_path).startswith(str(ROOT)) else str(json_path),
        "scenarios": {},
    }
    t_all = time.monotonic()
    for name in order:
        p = scale[name]
        sc = {"params": {k: ({str(a): b for a, b in v.items()}
                             if isinstance(v, dict) else v)
                         for k, v in p.items()},
              "runs": {kd: [] for kd in kinds_of(name)},
              "log_problems": {kd: [] for kd in kinds_of(name)}}
        results["scenarios"][name] = sc
        try:
            for rep in range(args.repeat):
                for kd in kinds_of(name):
                    log(f"[{time.monotonic() - t_all:6.1f}s] {name} "
                        f"{kd} (run {rep + 1}/{args.repeat}, "
                        f"load {loadavg()})")
                    srv = make_server(kd, work / f"{name}-{kd}-{rep}",
                                      modules, status_ok,
                                      p.get("workers", 2))
                    srv.start()
                    t0 = time.monotonic()
                    try:
                        metrics, raw = SCENARIOS[name](srv, p, f"r{rep}")
                    finally:
                        if not srv.stop():
                            sc["log_problems"][kd].append(
                                "nginx did not stop within 10 s of SIGQUIT")
                        sc["log_problems"][kd] += srv.log_problems()
                    add_cpu_metrics(name, metrics, raw)
                    sc["runs"][kd].append({"metrics": metrics, "raw": raw,
                                           "seconds": time.monotonic() - t0,
                                           "loadavg": loadavg()})
            summarize(sc)
        except Exception as e:  # keep going: report what failed
            sc["error"] = f"{type(e).__name__}: {e}"
            log(f"{name}: {sc['error']}")
    results["loadavg_end"] = loadavg()
    results["seconds"] = time.monotonic() - t_all

    # JSON first (no chart paths needed), then charts, then the report.
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    charts = write_charts(results, outdir, stamp)
    results["charts"] = {k: str(v) for k, v in charts.items()}
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    if md is not None:
        write_markdown(results, charts, md)
        log(f"wrote {md}")
    print_summary(results)
    print(f"results: {json_path}")
    return 0


# Scenarios in files of their own register here: name -> describe(params).
DESCRIBE = {}
import redis_bench  # noqa: E402  (bench/redis_bench.py: several machines)
redis_bench.register(sys.modules[__name__])


if __name__ == "__main__":
    sys.exit(main())
