"""Real redis-server processes for the Redis engine's tests: Debian's
redis-server on a free loopback port with its own directory, no
persistence unless asked, stopped by pid (never a system Redis)."""
import os
import socket
import subprocess
import time

import pytest

from sselib.redis_server import REDIS_CLI, REDIS_SERVER, Redis, Sentinel

needs_redis = pytest.mark.skipif(
    not os.path.exists(REDIS_SERVER),
    reason="redis-server is not installed (make deps)")


@pytest.fixture
def start_redis(tmp_path):
    started = []

    def start(port=None, args=(), tls=None, sentinel_of=None, auth=None):
        d = tmp_path / f"redis{len(started)}"
        if sentinel_of is not None:
            # sentinel_of: the primary's port, and Sentinel's settings.
            master_port, opts = sentinel_of
            r = Sentinel(d, master_port, port=port, **opts)
        else:
            r = Redis(d, port=port, args=args, tls=tls, auth=auth)
        started.append(r)
        return r.start()

    yield start
    for r in started:
        r.stop()


def zone_nginx_t(tmp_path, param):
    """`nginx -t` of a configuration whose zone has these parameters:
    (passed, output)."""
    from conftest import free_ports, nginx_test_config, render_conf
    sub, pub = free_ports(2)
    return nginx_test_config(tmp_path, render_conf(
        tmp_path, sub, pub, zone=f"sse_zone zone=sse:16m {param};"))


def assert_zone_refused(tmp_path, param, why):
    """`nginx -t` refuses the zone's parameters with [emerg] and `why`."""
    ok, out = zone_nginx_t(tmp_path, param)
    assert not ok, out
    assert why in out, out
    assert "[emerg]" in out


def redis_conf(url, size="16m", extra=""):
    return f"sse_zone zone=sse:{size} redis={url}{extra};"


async def wait_in_sync(n, timeout=10):
    """Waits until machine n's zone reports its Redis bus in sync."""
    import asyncio
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = await n.sub_http("GET", "/sse-status")
        if r.status == 200:
            last = r.json()["zones"][0]
            if last.get("redis", {}).get("state") == "up":
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"zone never in sync with Redis: {last}")


def cluster_port():
    """A free port whose cluster bus port (+10000) is free and valid."""
    import random
    from sselib.nginx import _HANDED_PORTS
    for _ in range(1000):
        port = random.randint(20000, 55000)
        if port in _HANDED_PORTS or port + 10000 in _HANDED_PORTS:
            continue
        try:
            for p in (port, port + 10000):
                with socket.socket() as sk:
                    sk.bind(("127.0.0.1", p))
        except OSError:
            continue
        _HANDED_PORTS.update((port, port + 10000))
        return port
    raise RuntimeError("no free cluster port")


def start_cluster(start_redis, n=3, replicas=0):
    """n nodes joined into a Redis Cluster, `replicas` per primary."""
    nodes = [start_redis(port=cluster_port(),
                         args=["--cluster-enabled", "yes",
                               "--cluster-config-file", "nodes.conf",
                               "--cluster-node-timeout", "1000"])
             for _ in range(n)]
    p = subprocess.run(
        [REDIS_CLI, "--cluster", "create",
         *[f"127.0.0.1:{r.port}" for r in nodes],
         "--cluster-replicas", str(replicas), "--cluster-yes"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Replicas that never synced would not take over.
        if all("cluster_state:ok" in r.cli("CLUSTER", "INFO")
               for r in nodes) and \
                all("master_link_status:up" in r.cli("INFO", "replication")
                    for r in nodes
                    if "role:slave" in r.cli("INFO", "replication")):
            return nodes
        time.sleep(0.1)
    raise RuntimeError("the cluster never became ok")


def node_of(nodes, key):
    """The node of `nodes` that holds key's slot."""
    slot = int(nodes[0].cli("CLUSTER", "KEYSLOT", key).strip())
    for line in nodes[0].cli("CLUSTER", "NODES").splitlines():
        f = line.split()
        if "fail" in f[2]:
            continue
        for rng in f[8:]:
            lo, _, hi = rng.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                port = int(f[1].split("@")[0].rsplit(":", 1)[1])
                return next(r for r in nodes if r.port == port)
    raise AssertionError(f"no node holds slot {slot}")


def start_sentinel_group(start_redis, n=3, name="mymaster", data_pass=None,
                         **opts):
    """A primary, one replica and n sentinels watching them (failover
    after a second down). data_pass: the data nodes' requirepass (and
    masterauth); opts["auth"]: the sentinels' (user or None, password).
    Returns (primary, replica, sentinels)."""
    pw = ["--requirepass", data_pass, "--masterauth", data_pass] \
        if data_pass else []
    auth = (None, data_pass) if data_pass else None
    primary = start_redis(args=pw, auth=auth)
    replica = start_redis(args=["--replicaof", "127.0.0.1",
                                str(primary.port), *pw], auth=auth)
    sentinels = [start_redis(sentinel_of=(primary.port,
                                          dict(name=name,
                                               master_pass=data_pass,
                                               **opts)))
                 for _ in range(n)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # The replica synced, and every sentinel knows the others and the
        # replica: only then can they agree on a failover.
        if "master_link_status:up" in replica.cli("INFO", "replication"):
            ms = [s.master() for s in sentinels]
            if all(m.get("num-other-sentinels") == str(n - 1) and
                   m.get("num-slaves") == "1" for m in ms):
                return primary, replica, sentinels
        time.sleep(0.1)
    raise RuntimeError(f"the sentinels never got ready: "
                       f"{[s.master() for s in sentinels]}")


def sentinel_url(sentinels, name="mymaster", extra=""):
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    return f"redis+sentinel://{hosts}/{name}{extra}"


class FakeDNS:
    """A DNS server on a free loopback UDP port for nginx's resolver:
    A records of `names` (name -> IPv4), NXDOMAIN for other names, no
    answer for other types. Counts the questions asked."""

    def __init__(self, names):
        import threading
        self.names = {k.lower(): v for k, v in names.items()}
        self.asked = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.done = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import struct
        while not self.done:
            try:
                q, addr = self.sock.recvfrom(512)
            except (socket.timeout, OSError):
                continue
            try:
                qid, _, qd = struct.unpack(">HHH", q[:6])
                i, labels = 12, []
                while q[i]:
                    labels.append(q[i + 1:i + 1 + q[i]].decode())
                    i += 1 + q[i]
                qtype, _ = struct.unpack(">HH", q[i + 1:i + 5])
                question = q[12:i + 5]
            except (struct.error, IndexError, UnicodeDecodeError):
                continue
            name = ".".join(labels).lower()
            self.asked.append((name, qtype))
            ip = self.names.get(name)
            answers = b""
            rcode = 0 if ip else 3
            if ip and qtype == 1:
                answers = struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + \
                    socket.inet_aton(ip)
            head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1,
                               1 if answers else 0, 0, 0)
            self.sock.sendto(head + question + answers, addr)

    def close(self):
        self.done = True
        self.thread.join(2)
        self.sock.close()


# ---- rhost: a Redis Cluster whose nodes announce hostnames

def start_host_cluster(start_redis, dns, n=3, replicas=0, capitals=False):
    """A Redis Cluster (start_cluster) whose nodes announce themselves as
    nodeN.sse.test (NodeN.SSE.test with capitals; cluster-announce-hostname,
    preferred endpoint type hostname: MOVED and ASK name them so), names
    that `dns` (a FakeDNS) resolves to 127.0.0.1. Returns the nodes, each
    with .host set."""
    made = []

    def start(port=None, args=()):
        host = f"Node{len(made)}.SSE.test" if capitals \
            else f"node{len(made)}.sse.test"
        dns.names[host.lower()] = "127.0.0.1"
        r = start_redis(port=port, args=[
            *args, "--cluster-announce-hostname", host,
            "--cluster-preferred-endpoint-type", "hostname"])
        r.host = host
        made.append(r)
        return r

    return start_cluster(start, n=n, replicas=replicas)


def multi_zone_conf(render_conf, names):
    """A render_conf for machines serving several zones: locations
    /e/ZONE/CHANNEL (subscribe) and /p/ZONE/CHANNEL (publish) per zone,
    the template's zone-less locations dropped (several zones need
    zone=NAME)."""
    import re

    def render(*a, **kw):
        kw["sub_locations"] = kw.get("sub_locations", "") + "".join(
            f"\n        location ~ ^/e/{z}/(?<zch>.+)$ "
            f"{{ sse_subscribe zone={z}; sse_channel $zch; sse_retry 3000; }}"
            for z in names)
        kw["pub_locations"] = kw.get("pub_locations", "") + "".join(
            f"\n        location ~ ^/p/{z}/(?<zch>.+)$ "
            f"{{ sse_publish zone={z}; sse_channel $zch; }}"
            for z in names)
        text = render_conf(*a, **kw)
        text = re.sub(r"\n        # /events/CHANNEL.*?\n        }\n", "\n",
                      text, flags=re.S)
        text = re.sub(r"\n        # several channels.*?\n        }\n", "\n",
                      text, flags=re.S)
        text = re.sub(r"\n        location ~ \(\?s\)\^/publish/.*?\n        }\n",
                      "\n", text, flags=re.S)
        text = re.sub(r"\n        # /pub\?channel=ID.*?\n        }\n", "\n",
                      text, flags=re.S)
        return text
    return render
