"""The benchmark's Redis scenario end to end (bench/redis_bench.py), at
its tiny scale: a redis-server started for it, two nginx machines of this
module and two of nchan on it, publishes and cross-machine fan-out.
Asserts that the harness ran and every event reached every subscriber
exactly once, in order, across machines; never timings."""

import json
import subprocess
from pathlib import Path

from redishelp import needs_redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"

pytestmark = needs_redis


def test_bench_redis_tiny(tmp_path):
    p = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "run.py"), "--scale", "redis-tiny",
         "--results", str(tmp_path), "--no-markdown"],
        capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    files = sorted(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    res = json.loads(files[0].read_text())
    assert res["order"] == ["redis"]
    sc = res["scenarios"]["redis"]
    assert "error" not in sc, sc.get("error")
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
    assert not sc["log_problems"]["ours"], sc["log_problems"]["ours"]
