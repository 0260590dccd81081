"""The browser client package (clients/js): its Vitest suite, which starts
its own nginx with the built module (clients/js/test/setup/nginx.js) and
runs connect(), streamRequest(), the parser and the React hook against it.

`make deps` installs clients/js/node_modules (npm ci, from the committed
package-lock.json); this test only runs the suite."""

import json
import os
import subprocess

import pytest

from conftest import ROOT

PKG = ROOT / "clients" / "js"
NPX = "/usr/bin/npx"


def test_client_package_vitest_suite(tmp_path):
    if not (PKG / "node_modules" / "vitest").is_dir():
        pytest.fail("clients/js/node_modules is missing: run `make deps` "
                    "(cd clients/js && npm ci)", pytrace=False)
    report = tmp_path / "vitest.json"
    env = dict(os.environ, CI="true", NO_COLOR="1",
               PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    env.pop("NODE_OPTIONS", None)
    try:
        p = subprocess.run(
            [NPX, "--no", "--", "vitest", "run", "--reporter=default",
             "--reporter=json", f"--outputFile={report}"],
            cwd=PKG, capture_output=True, text=True, timeout=300, env=env,
            stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"vitest ran over 300 s\n{e.stdout}\n{e.stderr}",
                    pytrace=False)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-8000:]
    r = json.loads(report.read_text())
    print(f"vitest: {r['numPassedTests']} passed, {r['numFailedTests']} "
          f"failed, {r['numPendingTests']} skipped in "
          f"{len(r['testResults'])} files")
    assert r["numFailedTests"] == 0 and r["numPendingTests"] == 0, out[-8000:]
    files = {os.path.basename(f["name"]) for f in r["testResults"]}
    assert files >= {"parser.test.js", "connect.test.js", "stream.test.js",
                     "react.test.js"}, files
    assert r["numPassedTests"] >= 40, r["numPassedTests"]
