"""The benchmark harness end to end, in its tiny mode: bench/run.py --tiny
builds build/sseload and build/floor if needed, starts nginx with this
module, then with nchan, then the floor server, fans 10 events out to 10
subscribers on each, runs the scale scenario in small (20 subscribers over
two generators, 4 workers), and writes its results JSON. Asserts that the
harness ran and that every event reached every subscriber exactly once, in
order, on every server. Timings are never asserted: they depend on the
machine."""

import json
import subprocess

from benchhelp import run_bench, scenario
from sselib.nginx import ROOT


def test_sseload_parser_self_test():
    """The load generator's chunked decoder and event parser, fed a tricky
    stream in every split (CR, LF, CRLF cut across reads, multi-line data,
    ids without data, chunk extensions)."""
    subprocess.run(["make", "-s", "-C", str(ROOT / "bench")], check=True,
                   timeout=300)
    p = subprocess.run([str(ROOT / "build" / "sseload"), "--self-test"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["self_test"] is True


def test_bench_tiny(tmp_path):
    res = run_bench(tmp_path, "--tiny")
    assert res["order"] == ["burst", "scale"]
    # Each scenario ran, and this module's nginx logged no alert, crit or
    # crash.
    burst = scenario(res, "burst")

    # The floor (bench/floor.cpp) runs beside both and must be exact too.
    for kind in ("ours", "nchan", "floor"):
        runs = burst["runs"][kind]
        assert runs, kind
        for run in runs:
            assert run["raw"], kind
            for n, raw in run["raw"].items():
                subscribers, events = int(n), raw["events"]
                assert raw["connect"]["failed"] == 0, (kind, raw["connect"])
                assert raw["connect"]["closed_by_server"] == 0, (kind, raw)
                assert raw["publish"]["ok"] == events, (kind, raw["publish"])
                d = raw["deliveries"]
                assert d["expected"] == subscribers * events, (kind, d)
                assert d["unique"] == d["expected"], (kind, d)
                assert d["duplicates"] == 0, (kind, d)
                assert d["unexpected"] == 0, (kind, d)
                assert d["wrong_channel"] == 0, (kind, d)
                assert d["out_of_order"] == 0, (kind, d)
                assert d["exactly_once"] and d["in_order"], (kind, d)
        assert all(burst["metrics"][kind][k] for k in burst["metrics"][kind]
                   if k.startswith("exactly_once@")), (kind, burst["metrics"])

    # The rate-matched rerun (the same events at one fixed rate for every
    # server): it ran on each, sent at that rate, and was exact too.
    for kind in ("ours", "nchan", "floor"):
        m = burst["metrics"][kind]
        assert m["matched_exactly_once@10"], (kind, m)
        assert m["matched_achieved_rate@10"] > 0, (kind, m)
        for run in burst["runs"][kind]:
            assert run["raw"]["10"]["matched"]["publish"]["ok"] == 10, kind

    # Several generators (own source addresses, one publishing once all
    # are connected) on 4 workers: every subscriber got every event.
    scale = scenario(res, "scale")
    for kind in ("ours", "nchan"):
        m = scale["metrics"][kind]
        assert m["subscribers_held"] == 20, (kind, m)
        assert m["exactly_once"], (kind, scale["runs"][kind])
