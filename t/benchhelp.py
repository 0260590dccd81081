"""bench/run.py end to end for t/test_bench_*.py: one run at a small
scale, its results JSON read back."""

import json
import subprocess

from sselib.nginx import ROOT

PYTHON = "/usr/bin/python3"


def run_bench(results, *args, timeout=300):
    """bench/run.py ARGS with its results in the directory `results` and
    no BENCHMARKS.md; asserts it succeeded and wrote one results file, and
    returns that file, parsed."""
    p = subprocess.run(
        [PYTHON, str(ROOT / "bench" / "run.py"), *args,
         "--results", str(results), "--no-markdown"],
        capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    files = sorted(results.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def scenario(res, name):
    """A scenario of the results that ran without an error, and whose
    nginx with this module logged no alert, crit or crash."""
    sc = res["scenarios"][name]
    assert "error" not in sc, sc.get("error")
    assert not sc["log_problems"]["ours"], sc["log_problems"]["ours"]
    return sc
