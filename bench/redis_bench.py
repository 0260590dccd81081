"""The Redis scenario of the benchmark (issue 9): several nginx "machines"
on this box, each with 2 workers, sharing channels through one
redis-server that the scenario starts (free port, temporary directory,
stopped by pid). bench/run.py registers it with register(); it runs once
for this module (`sse_zone ... redis=URL`) and once for nchan
(`nchan_redis_url`, same Redis build, same load), and each time first
measures the same load on the server run.py started (the shared-memory
engine, nchan's memory store), so the table shows both engines and both
modules side by side.

Cross-machine runs: one sseload process per receiving machine (B, C),
its subscribers on that machine, its publisher on machine A, each on its
own channel; all processes warm up (a first event reaches every
subscriber), then start publishing at once. The local runs are the same
processes with every port on one server.
"""

import json
import subprocess
import time
import urllib.request

from sselib.redis_server import Redis

R = None  # bench/run.py's module, set by register()

PARAMS = {
    "full": {"machines": 3, "subscribers": 1000, "rate": 20, "seconds": 5,
             "burst": 200, "publish": 20000, "publishers": 32, "size": 64},
    "small": {"machines": 3, "subscribers": 100, "rate": 20, "seconds": 2,
              "burst": 100, "publish": 4000, "publishers": 32, "size": 64},
    # What t/test_bench_redis.py runs: the harness end to end.
    "redis-tiny": {"machines": 2, "subscribers": 10, "rate": 20,
                   "seconds": 1, "burst": 10, "publish": 100,
                   "publishers": 2, "size": 64},
}

HTTP = {
    "ours": "sse_zone zone=sse:128m redis=@REDIS@;",
    "nchan": "nchan_shared_memory_size 128m; nchan_redis_url \"@REDIS@\"; "
             "nchan_use_redis on;",
}

TITLE = ("9. Redis: several machines on one Redis, publish on one, "
         "subscribers on the others")

METRICS = {
    "local_publish_per_s": ("publishes/s, one machine, local engine "
                            "(no Redis)", "{:,.0f}", +1),
    "redis_publish_per_s": ("publishes/s through Redis, one machine",
                            "{:,.0f}", +1),
    "redis_publish_p99_ms": ("publish response p99 through Redis, one "
                             "machine (ms)", "{:.2f}", -1),
    "redis_publish_per_s_all": ("publishes/s through Redis, all machines "
                                "at once (total)", "{:,.0f}", +1),
    "redis_cpu_us_per_publish": ("Redis CPU per publish (us, user+sys)",
                                 "{:.1f}", -1),
    "publish_all_accepted": ("every publish accepted (2xx)", None, 0),
    "local_sent_latency_p50_ms": ("paced latency p50, one machine, local "
                                  "engine (ms)", "{:.2f}", -1),
    "local_sent_latency_p99_ms": ("paced latency p99, one machine, local "
                                  "engine (ms)", "{:.2f}", -1),
    "xm_sent_latency_p50_ms": ("paced latency p50, cross-machine through "
                               "Redis (ms)", "{:.2f}", -1),
    "xm_sent_latency_p99_ms": ("paced latency p99, cross-machine through "
                               "Redis (ms)", "{:.2f}", -1),
    "xm_p50_over_local_ms": ("paced p50: cross-machine minus local (ms)",
                             "{:.2f}", -1),
    "local_paced_exactly_once": ("paced, local: every event exactly once, "
                                 "in order", None, 0),
    "xm_paced_exactly_once": ("paced, cross-machine: every event exactly "
                              "once, in order", None, 0),
    "local_deliveries_per_s": ("burst deliveries/s, one machine, local "
                               "engine", "{:,.0f}", +1),
    "xm_deliveries_per_s": ("burst deliveries/s, cross-machine through "
                            "Redis", "{:,.0f}", +1),
    "local_burst_latency_p99_ms": ("burst latency p99, local (ms)",
                                   "{:.2f}", -1),
    "xm_burst_latency_p99_ms": ("burst latency p99, cross-machine (ms)",
                                "{:.2f}", -1),
    "xm_burst_exactly_once": ("burst, cross-machine: every event exactly "
                              "once, in order", None, 0),
    "machines_log_clean": ("no [alert]/[crit]/[emerg] on any machine",
                           None, 0),
}

CHART = ["redis_publish_per_s", "redis_cpu_us_per_publish",
         "xm_sent_latency_p50_ms", "xm_sent_latency_p99_ms",
         "xm_deliveries_per_s"]

# Against nchan's Redis mode: ours / nchan.
TARGETS = [
    ("redis", "xm_deliveries_per_s", ">=", 1.0,
     "Redis, cross-machine burst: deliveries/s at least nchan's (Redis "
     "mode)"),
    ("redis", "xm_sent_latency_p99_ms", "<=", 1.0,
     "Redis, cross-machine paced latency p99 no worse than nchan's (Redis "
     "mode)"),
]


def describe(p):
    m = p["machines"]
    recv = m - 1
    return (
        f"{m} nginx machines (2 workers each) on one `redis-server` the "
        "scenario starts (no persistence, `maxmemory-policy noeviction`). "
        f"Publish rate: {p['publish']:,} POSTs of {p['size']} B over "
        f"{p['publishers']} keep-alive connections (one channel each) to "
        "one machine, then to every machine at once; Redis CPU per publish "
        "is the redis-server's user+sys time (/proc) over the one-machine "
        f"run / publishes. Paced: {p['subscribers']:,} subscribers split "
        f"over {recv} machine(s) B.., each group on its own channel, "
        f"{p['rate']} events/s each for {p['seconds']} s published on "
        "machine A (latency from the actual send, p50 the median of the "
        "groups' p50s, p99 the highest p99). Burst: the same subscribers, "
        f"{p['burst']} events per group as fast as answered. The local "
        "figures are the same load on one server of the same module "
        "without Redis (this module's shared-memory engine, nchan's memory "
        "store). Every process here shares the machine's 2 CPUs: the "
        "figures are noisy and the absolute rates are this box's, not "
        "Redis's.")


def _abs_rows(results):
    """The absolute targets of issue 9, from this run's figures."""
    sc = results["scenarios"].get("redis") or {}
    m = sc.get("metrics", {}).get("ours", {})
    return (R.absolute_row("Redis: publishes/s through Redis per machine at "
                           "least 20,000", m.get("redis_publish_per_s"),
                           "{:,.0f}/s", lambda v: v >= 20000) +
            R.absolute_row("Redis: cross-machine paced latency p50 within "
                           "1 ms of the local engine's",
                           m.get("xm_p50_over_local_ms"), "{:+.2f} ms",
                           lambda v: v <= 1.0))


def register(run):
    """Adds the scenario to bench/run.py's tables (called by run.py)."""
    global R
    R = run
    for scale, p in PARAMS.items():
        run.SCALES.setdefault(scale, {})["redis"] = p
    run.ORDER.append("redis")
    run.TITLES["redis"] = TITLE
    run.SCENARIOS["redis"] = scenario
    run.METRIC_INFO.update(METRICS)
    run.CHART["redis"] = CHART
    run.TARGETS.extend(TARGETS)
    run.DESCRIBE["redis"] = describe
    table = run.targets_table

    def targets_table(results):
        lines = table(results)
        return lines[:-1] + _abs_rows(results) + lines[-1:]
    run.targets_table = targets_table
    for kind in ("ours", "nchan"):
        conf = dict(run.MODULE_CONF[kind])
        conf["http"] = HTTP[kind]
        run.MODULE_CONF[kind + "-redis"] = conf
        run.LABEL[kind + "-redis"] = run.LABEL[kind] + " (Redis)"


# ---------------------------------------------------------------- servers

def machine(kind, d, module, url):
    """One nginx "machine" of `kind` with its zone (or nchan) on Redis."""
    class Machine(R.Server):
        def render(self):
            return super().render().replace("@REDIS@", url)
    srv = Machine(kind + "-redis", d, module, True)
    srv.env = R.nginx_env(kind, srv.dir)  # a sanitizer build's, for ours
    srv.start()
    return srv


def wait_in_sync(srv, timeout=15):
    """This module: until the zone reports its Redis bus up (nchan has no
    such figure; the warm-up of each run covers it)."""
    if not srv.kind.startswith("ours"):
        return
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{srv.pub_port}/status",
                    timeout=5) as r:
                last = json.loads(r.read())["zones"][0].get("redis", {})
            if last.get("state") == "up":
                return
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"machine never in sync with Redis: {last}")


# ---------------------------------------------------------------- loads

def fanout(pub, subs, p, prefix, rate):
    """p["subscribers"] spread over the servers `subs`, each group on its
    own channel, all published through `pub`: paced at `rate` per group
    for p["seconds"], or (rate 0) p["burst"] events as fast as answered.
    Latency is from the actual send (latency_ms)."""
    events = int(rate * p["seconds"]) if rate else p["burst"]
    timeout = p["seconds"] + 60
    args = []
    for i, s in enumerate(subs):
        kw = dict(subscribers=p["subscribers"] // len(subs), channels=1,
                  events=events, size=p["size"], publishers=1, batch=200,
                  timeout=timeout)
        if rate:
            kw["rate"] = rate
        a = R.sseload_args(s, "fanout", f"{prefix}{i}-", **kw)
        args.append(a + ["--pub-port", str(pub.pub_port), "--wait-stdin"])
    # All subscribers connected and warmed up, then all publish at once.
    gens = R.Generators(args, timeout)
    gens.go()
    outs = gens.reports(timeout * 2)
    return R.fanned_out(outs), outs


def publish_rate(servers, p, prefix):
    """p["publish"] publishes to each server at once; (total per second,
    per-server reports)."""
    procs = []
    for i, s in enumerate(servers):
        args = R.sseload_args(s, "publish", f"{prefix}{i}-", subscribers=0,
                              channels=p["publishers"], events=p["publish"],
                              size=p["size"], publishers=p["publishers"],
                              timeout=120)
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for pr in procs:
        out, err = pr.communicate(timeout=600)
        outs.append(R.sseload_report(pr.returncode, out, err))
    total = sum(o["publish"]["per_second"] for o in outs)
    return total, outs


def accepted(outs, p):
    return all(o["publish"]["ok"] == p["publish"] and
               o["publish"]["errors"] == 0 for o in outs)


# ---------------------------------------------------------------- scenario

def scenario(srv, p, tag):
    """run.py's entry: `srv` is a fresh server of this kind without Redis
    (the local figures); then Redis and p["machines"] machines."""
    kind = srv.kind
    m, raw = {}, {}
    recv = p["machines"] - 1

    local_pub, raw["local_publish"] = publish_rate([srv], p, f"{tag}lp")
    m["local_publish_per_s"] = local_pub
    lp, raw["local_paced"] = fanout(srv, [srv] * recv, p, f"{tag}ll",
                                    p["rate"])
    lb, raw["local_burst"] = fanout(srv, [srv] * recv, p, f"{tag}lb", 0)

    base = srv.dir.parent / f"{srv.dir.name}-redis"
    redis = Redis(base / "redis",
                  args=["--maxmemory-policy", "noeviction"]).start()
    machines = []
    try:
        for i in range(p["machines"]):
            machines.append(machine(kind, base / f"m{i}", srv.module,
                                    redis.url))
        for s in machines:
            wait_in_sync(s)
        a = machines[0]
        cpu0 = redis.cpu()
        one, raw["redis_publish"] = publish_rate([a], p, f"{tag}rp")
        cpu1 = redis.cpu()
        ok = sum(o["publish"]["ok"] for o in raw["redis_publish"])
        m["redis_publish_per_s"] = one
        m["redis_publish_p99_ms"] = \
            raw["redis_publish"][0]["publish"]["response_ms"].get("p99")
        m["redis_cpu_us_per_publish"] = (cpu1 - cpu0) * 1e6 / ok if ok \
            else None
        m["redis_publish_per_s_all"], raw["redis_publish_all"] = \
            publish_rate(machines, p, f"{tag}ra")
        m["publish_all_accepted"] = (
            accepted(raw["local_publish"], p) and
            accepted(raw["redis_publish"], p) and
            accepted(raw["redis_publish_all"], p))

        xp, raw["xm_paced"] = fanout(a, machines[1:], p, f"{tag}xl",
                                     p["rate"])
        xb, raw["xm_burst"] = fanout(a, machines[1:], p, f"{tag}xb", 0)
    finally:
        problems = []
        for s in machines:
            if not s.stop():
                problems.append(f"{s.dir}: did not stop within 10 s")
            problems += s.log_problems()
        redis.stop()
        raw["machines_log_problems"] = problems
    m["machines_log_clean"] = not problems

    m["local_sent_latency_p50_ms"] = lp["latency_p50_ms"]
    m["local_sent_latency_p99_ms"] = lp["latency_p99_ms"]
    m["xm_sent_latency_p50_ms"] = xp["latency_p50_ms"]
    m["xm_sent_latency_p99_ms"] = xp["latency_p99_ms"]
    m["xm_p50_over_local_ms"] = xp["latency_p50_ms"] - lp["latency_p50_ms"]
    m["local_paced_exactly_once"] = lp["exactly_once"]
    m["xm_paced_exactly_once"] = xp["exactly_once"]
    m["local_deliveries_per_s"] = lb["deliveries_per_s"]
    m["xm_deliveries_per_s"] = xb["deliveries_per_s"]
    m["local_burst_latency_p99_ms"] = lb["latency_p99_ms"]
    m["xm_burst_latency_p99_ms"] = xb["latency_p99_ms"]
    m["xm_burst_exactly_once"] = xb["exactly_once"]
    return m, raw
