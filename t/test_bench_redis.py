"""The benchmark's Redis scenario end to end (bench/redis_bench.py), at
its tiny scale: a redis-server started for it, two nginx machines of this
module and two of nchan on it, publishes and cross-machine fan-out.
Asserts that the harness ran and every event reached every subscriber
exactly once, in order, across machines; never timings."""

from benchhelp import run_bench, scenario
from redishelp import needs_redis

pytestmark = needs_redis


def test_bench_redis_tiny(tmp_path):
    res = run_bench(tmp_path, "--scale", "redis-tiny")
    assert res["order"] == ["redis"]
    sc = scenario(res, "redis")
    for kind in ("ours", "nchan"):
        m = sc["metrics"][kind]
        for key in ("publish_all_accepted", "local_paced_exactly_once",
                    "xm_paced_exactly_once", "xm_burst_exactly_once"):
            assert m[key] is True, (kind, key, m)
        run = sc["runs"][kind][0]["raw"]
        # Every subscriber sat on another machine than the publisher.
        par = sc["params"]
        per = par["subscribers"] // (par["machines"] - 1) * par["burst"]
        for o in run["xm_burst"]:
            d = o["deliveries"]
            assert d["unique"] == d["expected"] == per, (kind, d)
        assert m["redis_publish_per_s"] > 0, (kind, m)
    assert sc["metrics"]["ours"]["machines_log_clean"], \
        sc["runs"]["ours"][0]["raw"]["machines_log_problems"]
