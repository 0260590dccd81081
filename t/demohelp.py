"""The demo (examples/nginx.conf + examples/ai_model.py) on free ports, for
t/test_demo_browser.py and t/test_client_js.py.

`Demo` renders a copy of examples/nginx.conf with its three ports and its
build/demo/ paths replaced, starts nginx (prefix = the repository, so
`root examples/www` and `load_module build/...` resolve as in `make demo`)
and the pretend model, and stops both by pid. Its log check is conftest's,
except that "worker process N exited on signal 9" is allowed for the
workers a test killed on purpose (`allow_killed`)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pylib"))
from sselib.nginx import (BAD_LOG, MODULE, ROOT,  # noqa: E402
                          NginxProcess, free_port, sanitizer_reports)
from sselib.proc import conns_per_process, end_process  # noqa: E402

EXAMPLES = ROOT / "examples"
DEMO_CONF = EXAMPLES / "nginx.conf"
AI_MODEL = EXAMPLES / "ai_model.py"
PYTHON = "/usr/bin/python3"

KILLED_LINE = re.compile(r"worker process (\d+) exited on signal 9\b")


def render_demo_conf(text, d, public, internal, model):
    """examples/nginx.conf with ports and build/demo/ paths replaced."""
    out = text
    for old, new in (("127.0.0.1:8080", public), ("127.0.0.1:8081", internal),
                     ("127.0.0.1:8082", model)):
        assert old in out, f"{old} is no longer in examples/nginx.conf"
        out = out.replace(old, f"127.0.0.1:{new}")
    assert "build/demo/" in out
    out = out.replace("build/demo/", f"{d}/")
    # SSE_MODULE (make test-asan) names another build of the module.
    load = "load_module build/ngx_http_sse_module.so;"
    assert load in out, f"{load} is no longer in examples/nginx.conf"
    out = out.replace(load, f"load_module {MODULE};")
    # Relative to the configuration's directory, which is not examples/.
    keys = "sse_auth_jwt_key_file jwks.json;"
    if keys in out:
        out = out.replace(keys, f"sse_auth_jwt_key_file {EXAMPLES}/jwks.json;")
    return out


def _get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


class Demo(NginxProcess):
    def __init__(self, d, delay=0.03):
        super().__init__(d)
        self.prefix = ROOT  # as in `make demo`
        self.public = free_port()
        self.internal = free_port()
        self.model_port = free_port()
        self.delay = delay
        self.conf.write_text(render_demo_conf(
            DEMO_CONF.read_text(), self.dir, self.public, self.internal,
            self.model_port))
        self.model_log = self.dir / "ai_model.log"
        self.model = None
        self.killed = set()  # worker pids killed on purpose

    @property
    def base(self):
        return f"http://127.0.0.1:{self.public}"

    def run(self, *args):
        g = ["-g", "user root;"] if os.geteuid() == 0 else []
        return super().run(*g, *args)

    def test_config(self):
        p = self.run("-t")
        self.output += p.stdout + p.stderr
        return p.returncode == 0, p.stdout + p.stderr

    def start(self):
        with open(self.model_log, "wb") as log:
            self.model = subprocess.Popen(
                [PYTHON, str(AI_MODEL), "--port", str(self.model_port),
                 "--publish", f"http://127.0.0.1:{self.internal}/publish/",
                 "--delay", str(self.delay)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.launch((self.public, self.internal))
        except Exception:
            self.stop()
            raise
        deadline = time.monotonic() + 10
        while True:
            try:
                _get(f"http://127.0.0.1:{self.model_port}/health")
                _get(f"{self.base}/status")
                break
            except OSError:
                if (time.monotonic() > deadline
                        or self.model.poll() is not None):
                    raise RuntimeError("the demo did not come up:\n"
                                       + self.model_log.read_text())
                time.sleep(0.02)
        return self

    def subscriber_conns(self):
        """{worker pid: established connections to the public port}."""
        w = self.workers()
        return dict(zip(w, conns_per_process(w, self.public)))

    def stop(self):
        ok = super().stop()
        end_process(self.model)
        return ok

    def bad_log_lines(self):
        out = []
        for line in self.log_text().splitlines():
            if not BAD_LOG.search(line):
                continue
            m = KILLED_LINE.search(line)
            if m and int(m.group(1)) in self.killed:
                continue
            out.append(line)
        return out + sanitizer_reports(self.dir, self.output)

    def allow_killed(self, pids):
        self.killed.update(int(p) for p in pids)

    # ---- HTTP, for checks without a browser

    def request(self, method, path, body=None, headers=None, port=None,
                timeout=5):
        """(status, headers dict (lower-case), body bytes)."""
        port = port or self.public
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                hdrs = {k.lower(): v for k, v in r.headers.items()}
                return r.status, hdrs, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, \
                e.read()

    def channel_info(self, channel):
        s, _, b = self.request("GET", f"/publish/{channel}",
                               port=self.internal)
        return json.loads(b) if s == 200 else None


if __name__ == "__main__":
    # Manual use: python3 t/demohelp.py DIR  (runs until Ctrl-C)
    sys.path.insert(0, str(Path(__file__).parent))
    d = Path(sys.argv[1])
    d.mkdir(parents=True, exist_ok=True)
    demo = Demo(d).start()
    # Blocked only now: the children must not inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print(f"demo on {demo.base}/ (internal {demo.internal}, model "
          f"{demo.model_port}); master {demo.master}", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        demo.stop()
