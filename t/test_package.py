"""Installing the module as an operator does: `make install` into a DESTDIR
(any user), and the Debian package into this very system (root only): the
system nginx loads it through /etc/nginx/modules-enabled, serves a
configuration made from examples/nginx.conf, and a purge leaves nothing."""

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (ROOT, SSEClient, _wait_port, free_ports, http,
                      proc_alive, proc_children)

VERSION = re.search(r'#define NGX_HTTP_SSE_VERSION "([^"]+)"',
                    (ROOT / "ngx_http_sse_module" /
                     "ngx_http_sse_version.hpp").read_text()).group(1)
PKG = "libnginx-mod-http-sse"
SYSTEM_NGINX = "/usr/sbin/nginx"
SO = "/usr/lib/nginx/modules/ngx_http_sse_module.so"
AVAILABLE = "/usr/share/nginx/modules-available/mod-http-sse.conf"
ENABLED = "/etc/nginx/modules-enabled/50-mod-http-sse.conf"
BAD_LOG = re.compile(r"\[(alert|emerg|crit)\]")


def make(*args, timeout=600):
    p = subprocess.run(["make", "-C", str(ROOT), *args], capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p.stdout


def test_make_install_and_uninstall_respect_destdir_and_prefix(tmp_path):
    dest = tmp_path / "root"
    make("install", f"DESTDIR={dest}", "PREFIX=/usr/local")
    so = dest / "usr/local/lib/nginx/modules/ngx_http_sse_module.so"
    avail = dest / "usr/local/share/nginx/modules-available/mod-http-sse.conf"
    link = dest / "etc/nginx/modules-enabled/50-mod-http-sse.conf"
    assert so.is_file()
    assert so.read_bytes() == (ROOT / "build/ngx_http_sse_module.so") \
        .read_bytes()
    # Paths inside are the installed ones, without DESTDIR.
    assert avail.read_text() == \
        "load_module /usr/local/lib/nginx/modules/ngx_http_sse_module.so;\n"
    assert link.is_symlink()
    assert os.readlink(link) == \
        "/usr/local/share/nginx/modules-available/mod-http-sse.conf"
    make("uninstall", f"DESTDIR={dest}", "PREFIX=/usr/local")
    left = [p for p in dest.rglob("*") if not p.is_dir()]
    assert left == [], left


# ---------------------------------------------------------------- the deb

def dpkg(*args, check=True):
    """dpkg, waiting out another dpkg/apt run holding the lock."""
    deadline = time.monotonic() + 120
    while True:
        p = subprocess.run(["dpkg", *args], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL,
                           env=dict(os.environ,
                                    DEBIAN_FRONTEND="noninteractive"))
        out = p.stdout + p.stderr
        if "lock" in out and p.returncode != 0 and \
                time.monotonic() < deadline:
            time.sleep(1)
            continue
        assert not check or p.returncode == 0, out
        return p.returncode, out


def installed():
    rc, out = dpkg("-s", PKG, check=False)
    return rc == 0 and "Status: install ok installed" in out


def leftovers():
    paths = [SO, AVAILABLE, ENABLED, ENABLED + ".removed",
             f"/usr/share/doc/{PKG}"]
    found = [p for p in paths if os.path.lexists(p)]
    rc, out = dpkg("-l", PKG, check=False)
    # "pn" (unknown/purged) or no line at all: nothing of it is known.
    if rc == 0 and re.search(rf"^(?!pn)\w\w\s+{PKG}\s", out, re.M):
        found.append(f"dpkg -l: {out.splitlines()[-1]}")
    return found


def demo_config(d, sub, pub, model):
    """examples/nginx.conf on our ports and in our prefix, loading the
    module through /etc/nginx/modules-enabled as Debian's nginx.conf does
    (only our link: Debian's other snippets name their .so relative to the
    prefix, and this nginx runs with its own -p)."""
    conf = (ROOT / "examples" / "nginx.conf").read_text()
    conf = conf.replace("load_module build/ngx_http_sse_module.so;",
                        f"include {ENABLED};")
    assert "modules-enabled" in conf
    conf = conf.replace("build/demo", str(d))
    conf = conf.replace("root examples/www;", f"root {ROOT}/examples/www;")
    # The demo's key set is relative to examples/; this prefix is elsewhere.
    conf = conf.replace("sse_auth_jwt_key_file jwks.json;",
                        f"sse_auth_jwt_key_file {ROOT}/examples/jwks.json;")
    for old, new in (("8080", sub), ("8081", pub), ("8082", model)):
        conf = conf.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    assert not re.search(r"\b808[012]\b", conf)
    return "user root;\n" + conf


@pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: root")
def test_debian_package_into_system_nginx(tmp_path):
    out = make("deb")
    deb = ROOT / "build" / f"{PKG}_{VERSION}_amd64.deb"
    assert str(deb) in out and deb.is_file()
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends",
                             "Version"], capture_output=True, text=True,
                            check=True).stdout
    abi = re.search(r"^nginx:abi=(\S+)", Path(
        "/usr/share/nginx/src/debian/libnginx-mod.abisubstvars").read_text(),
        re.M).group(1)
    assert re.search(rf"^Depends: {re.escape(abi)}, .*libstdc\+\+6", fields,
                     re.M), fields
    assert f"Version: {VERSION}" in fields

    if installed() or leftovers():
        dpkg("--purge", PKG)
    assert leftovers() == []
    dpkg("-i", str(deb))
    try:
        assert installed()
        assert os.path.isfile(SO)
        assert Path(AVAILABLE).read_text() == f"load_module {SO};\n"
        assert os.readlink(ENABLED) == AVAILABLE
        run_system_nginx(tmp_path)
        # Removal parks the link as Debian's modules do; purge drops all.
        dpkg("-r", PKG)
        assert not os.path.lexists(ENABLED)
        assert os.path.islink(ENABLED + ".removed")
    finally:
        dpkg("--purge", PKG, check=False)
    assert leftovers() == []


def run_system_nginx(d):
    sub, pub, model = free_ports(3)
    conf = d / "nginx.conf"
    conf.write_text(demo_config(d, sub, pub, model))
    p = subprocess.run([SYSTEM_NGINX, "-t", "-p", f"{d}/", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([SYSTEM_NGINX, "-p", f"{d}/", "-c", str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    pid_file = d / "nginx.pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    master = int(pid_file.read_text())
    procs = [master] + proc_children(master)
    try:
        assert _wait_port(sub, deadline) and _wait_port(pub, deadline)
        asyncio.run(subscribe_and_publish(sub, pub))
    finally:
        os.kill(master, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while any(proc_alive(p) for p in procs) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    assert not any(proc_alive(p) for p in procs)
    log = (d / "error.log").read_text()
    assert f"sse module {VERSION}" in log
    assert not BAD_LOG.search(log), log


async def subscribe_and_publish(sub, pub):
    channel = "room/1"     # ids allow '/', and so do the examples' locations
    c = await SSEClient.open(sub, f"/events/{channel}")
    try:
        assert c.status == 200, c
        r = await http(pub, "POST", f"/publish/{channel}",
                       headers={"SSE-Event": "greeting"},
                       body="hello\nworld")
        assert r.status == 202, r
        eid = r.json()["id"]
        ev = await c.next_event()
        assert (ev.id, ev.event, ev.data) == (eid, "greeting", "hello\nworld")
    finally:
        c.close()
    r = await http(pub, "GET", "/sse-status")
    assert r.status == 200 and r.json()["version"] == VERSION
