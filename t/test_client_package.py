"""clients/js as a user gets it: `npm pack`, the tarball installed offline
into a fresh project, imported in Node, and its TypeScript types checked by
tsc against a file that uses the API the README shows."""

import json
import os
import re
import subprocess
import tarfile

import pytest

from conftest import ROOT

PKG = ROOT / "clients" / "js"
NPM = "/usr/bin/npm"
VERSION = re.search(r'#define NGX_HTTP_SSE_VERSION "([^"]+)"',
                    (ROOT / "ngx_http_sse_module" /
                     "ngx_http_sse_version.hpp").read_text()).group(1)

USE_TS = """\
import { connect, streamRequest, createParser, backoffDelay, STATES,
         StreamRequestError } from "@ngx-sse/client";
import type { Connection, ConnectionState, Gap, StreamEvent }
    from "@ngx-sse/client";
import { createParser as parserOnly } from "@ngx-sse/client/parser";
import { useEventStream } from "@ngx-sse/client/react";
import type { EventStreamSnapshot } from "@ngx-sse/client/react";

const p = createParser({ onEvent: (e: StreamEvent) => e.data.length });
p.feed("data: x\\n\\n");
const p2 = parserOnly((e) => e.type);
const id: string = p2.lastEventId;
const d: number = backoffDelay(3, { initialDelay: 100 });
const s: readonly ConnectionState[] = STATES;
const c: Connection = connect("/events/a", { message: (data) => data }, {
  onGap: (g: Gap) => g.reason, maxRetries: 3 });
c.close();
const r: Promise<unknown> = streamRequest("/x", { method: "POST" }, () => {});
const err: Error = new StreamRequestError("x" as any, 500 as any);
type Snap = EventStreamSnapshot["state"];
const hook: typeof useEventStream = useEventStream;
export { id, d, s, r, err, hook };
export type { Snap };
"""

BAD_TS = """\
import { connect } from "@ngx-sse/client";
const n: number = connect("/events/a");
"""


def run(cmd, cwd, timeout=120):
    env = dict(os.environ, npm_config_audit="false", npm_config_fund="false",
               npm_config_update_notifier="false")
    env.pop("NODE_OPTIONS", None)
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout + p.stderr


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("pack")
    rc, log = run([NPM, "pack", "--json", "--pack-destination", str(out)],
                  PKG)
    assert rc == 0, log
    name = json.loads(log[log.index("["):])[0]["filename"]
    return out / name


def test_package_version_licence_and_files(tarball):
    meta = json.loads((PKG / "package.json").read_text())
    assert meta["version"] == VERSION
    assert "private" not in meta
    assert meta["license"] == "BSD-2-Clause"
    assert tarball.name == f"ngx-sse-client-{VERSION}.tgz"
    with tarfile.open(tarball) as t:
        names = set(t.getnames())
    assert {"package/README.md", "package/LICENSE", "package/package.json",
            "package/src/index.js", "package/src/index.d.ts",
            "package/src/react.d.ts",
            "package/src/parser.d.ts"} <= names, names
    # The tests and their deps stay out of what users install.
    assert not any(n.startswith(("package/test/", "package/node_modules/"))
                   for n in names), names


@pytest.fixture(scope="module")
def project(tmp_path_factory, tarball):
    d = tmp_path_factory.mktemp("app")
    (d / "package.json").write_text(json.dumps(
        {"name": "app", "version": "1.0.0", "private": True,
         "type": "module"}))
    # Offline: the package has no runtime dependency to fetch.
    rc, log = run([NPM, "install", "--offline", "--no-package-lock",
                   str(tarball)], d)
    assert rc == 0, log
    return d


def test_installed_package_imports_in_node(project):
    inst = project / "node_modules" / "@ngx-sse" / "client"
    assert (inst / "README.md").is_file() and (inst / "LICENSE").is_file()
    script = """
import * as m from "@ngx-sse/client";
import { createParser } from "@ngx-sse/client/parser";
const got = [];
const p = createParser((e) => got.push([e.type, e.id, e.data]));
p.feed("id: 7-1\\nevent: greeting\\ndata: hello\\ndata: wor");
p.feed("ld\\n\\n");
console.log(JSON.stringify({exports: Object.keys(m).sort(), got,
  same: m.createParser === createParser}));
"""
    rc, out = run(["node", "--input-type=module", "-e", script], project)
    assert rc == 0, out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["exports"] == sorted(["connect", "backoffDelay",
                                   "withLastEventId", "STATES",
                                   "streamRequest", "StreamRequestError",
                                   "createParser"])
    assert r["got"] == [["greeting", "7-1", "hello\nworld"]]
    assert r["same"] is True


def tsc(project, source):
    ts = PKG / "node_modules" / "typescript" / "bin" / "tsc"
    if not ts.is_file():
        pytest.fail("clients/js/node_modules is missing: run `make "
                    "test-deps`", pytrace=False)
    (project / "use.ts").write_text(source)
    return run(["node", str(ts), "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution",
                "nodenext", "--target", "es2022", "--lib", "es2022,dom",
                "use.ts"], project)


def test_installed_types_check_with_tsc(project):
    rc, out = tsc(project, USE_TS)
    assert rc == 0, out


def test_tsc_catches_a_wrong_use(project):
    # Proves the types are read: a misuse fails the check.
    rc, out = tsc(project, BAD_TS)
    assert rc != 0 and "TS2322" in out, out


def test_make_demo_installs_no_test_dependencies():
    # `make -n` prints what would run: the demo needs no npm install; the
    # tests install the client's test deps (vitest, jsdom, react).
    def dry(target):
        p = subprocess.run(["make", "-n", "-C", str(ROOT), target],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout
    assert "npm" not in dry("demo")
    assert "cd clients/js && npm ci" in dry("integration")
