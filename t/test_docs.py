"""The README and docs/ as a new user reads them: every directive of the
module's command table is documented; the README's five-line configuration
pasted into Debian's /etc/nginx/nginx.conf passes `nginx -t`; its curl
session, and the curl and Python examples of docs/protocol.md, print what
the documents show when run against those lines."""

import json
import os
import re
import signal
import sys
import subprocess
import time

import pytest

from conftest import (BAD_LOG, MODULE, NGINX_BIN, ROOT, _wait_port,
                      free_ports, nginx_env, sanitizer_reports)

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
DEBIAN_CONF = "/etc/nginx/nginx.conf"
ID = re.compile(r"\b\d+-\d+\b")


def section(title):
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def blocks(text, lang):
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def snippet():
    (b,) = blocks(section("Five lines of configuration"), "nginx")
    return b


def test_the_snippet_is_five_lines_for_the_http_block():
    lines = snippet().splitlines()
    assert len(lines) == 5, lines
    assert not any(re.match(r"\s*(load_module|http\b|events\b)", ln)
                   for ln in lines)
    # Channel ids may hold '/': the example locations must let it through.
    assert all("[\\w.:@~/-]" in ln for ln in lines if "location" in ln)
    assert "include /etc/nginx/sites-enabled/*;" in \
        section("Five lines of configuration")


def test_snippet_pasted_into_debians_nginx_conf_passes_nginx_t(tmp_path):
    conf = open(DEBIAN_CONF).read()
    anchor = "include /etc/nginx/sites-enabled/*;"
    assert anchor in conf, "Debian's nginx.conf changed its last include"
    # Where the README says: right after the last line of http { }; the
    # module as `make install`/the package loads it (an absolute path).
    conf = conf.replace(anchor, anchor + "\n" + snippet(), 1)
    conf = f"load_module {MODULE};\n" + conf
    (tmp_path / "nginx.conf").write_text(conf)
    # Debian's own prefix, so its modules-enabled snippets load too.
    p = subprocess.run([NGINX_BIN, "-t", "-c", str(tmp_path / "nginx.conf")],
                       capture_output=True, text=True, timeout=30,
                       env=nginx_env(tmp_path))
    assert p.returncode == 0, p.stderr
    assert not sanitizer_reports(tmp_path, p.stderr)
    assert "test is successful" in p.stderr


@pytest.fixture
def readme_nginx(tmp_path):
    """nginx running the snippet on free ports instead of 8080/8081."""
    sub, pub = free_ports(2)
    body = snippet().replace("listen 8080;", f"listen 127.0.0.1:{sub};") \
        .replace("127.0.0.1:8081", f"127.0.0.1:{pub}")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""load_module {MODULE};
worker_processes 2;
error_log {tmp_path}/error.log info;
pid {tmp_path}/nginx.pid;
events {{ }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
{body}
}}
""")
    started = subprocess.run([NGINX_BIN, "-p", f"{tmp_path}/", "-c",
                              str(conf)], check=True, capture_output=True,
                             text=True, timeout=30, env=nginx_env(tmp_path))
    deadline = time.monotonic() + 10
    assert _wait_port(sub, deadline) and _wait_port(pub, deadline)
    master = int((tmp_path / "nginx.pid").read_text())
    yield sub, pub, master
    os.kill(master, signal.SIGQUIT)
    log = (tmp_path / "error.log").read_text()
    assert not BAD_LOG.search(log), log
    bad = sanitizer_reports(tmp_path, started.stderr)
    assert not bad, "\n".join(bad)


def commands_and_outputs(block):
    """[(command, expected output)] of a console block."""
    out = []
    for part in re.split(r"^\$ ", block, flags=re.M)[1:]:
        cmd, _, expected = part.partition("\n")
        out.append((cmd, expected))
    return out


def run(cmd, sub, pub, background=False):
    cmd = cmd.replace("127.0.0.1:8080", f"127.0.0.1:{sub}") \
        .replace("127.0.0.1:8081", f"127.0.0.1:{pub}")
    args = ["bash", "-c", cmd]
    if background:
        # stop() sends Ctrl-C: a harness started in the background (nohup,
        # `cmd &` in a script) hands SIGINT down ignored, so reset it.
        return subprocess.Popen(
            args, stdout=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return subprocess.run(args, capture_output=True, text=True, timeout=10,
                          check=True).stdout


def same(got, want):
    """Equal once ids are replaced by the ids the run produced."""
    return ID.sub("ID", got) == ID.sub("ID", want)


def info(pub, channel="demo"):
    return run(f"curl -s http://127.0.0.1:8081/publish/{channel}", 0, pub)


def wait_for(pred, what):
    deadline = time.monotonic() + 5
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def stop(p):
    p.send_signal(signal.SIGINT)        # Ctrl-C
    out, _ = p.communicate(timeout=5)
    return out


def test_curl_session_matches_the_readme(readme_nginx):
    sub, pub, _ = readme_nginx
    sec = section("A curl session")
    subscribe_block, publish_block, resume_block = blocks(sec, "console")
    ((sub_cmd, sub_want),) = commands_and_outputs(subscribe_block)
    (pub_cmd, pub_want), (info_cmd, info_want) = \
        commands_and_outputs(publish_block)
    (more_cmd, more_want), (resume_cmd, resume_want) = \
        commands_and_outputs(resume_block)

    s = run(sub_cmd.replace("curl ", "curl -s ", 1), sub, pub,
            background=True)
    wait_for(lambda: '"subscribers":1' in info(pub), "the subscriber")
    got = run(pub_cmd, sub, pub)
    assert same(got, pub_want), got
    first = ID.search(got).group(0)
    assert same(run(info_cmd, sub, pub), info_want)
    time.sleep(0.3)
    got = stop(s)
    assert same(got, sub_want), got
    assert first in got

    wait_for(lambda: '"subscribers":0' in info(pub), "the subscriber gone")
    got = run(more_cmd, sub, pub)
    assert same(got, more_want), got
    resume_cmd = resume_cmd.replace(ID.search(resume_cmd).group(0), first)
    r = run(resume_cmd.replace("curl ", "curl -s ", 1), sub, pub,
            background=True)
    time.sleep(0.5)
    got = stop(r)
    assert same(got, resume_want), got
    # Ids in the README's session follow on from each other, as real ones do.
    ids = [ID.findall(b) for b in (pub_want, more_want)]
    assert int(ids[1][0].split("-")[1]) == int(ids[0][0].split("-")[1]) + 1


# ---------------------------------------------------------------- directives

def command_table():
    """The directive names of every ngx_command_t table in the module."""
    names = []
    for f in sorted((ROOT / "ngx_http_sse_module").glob("*.cpp")):
        for table in re.findall(r"ngx_command_t\s+\w+\[\]\s*=\s*\{(.*?)"
                                r"ngx_null_command", f.read_text(), re.S):
            names += re.findall(r"\{\s*ngx_string\(\"([a-z_0-9]+)\"\)", table)
    return names


def test_every_directive_is_documented():
    names = command_table()
    assert len(names) >= 17 and "sse_zone" in names, names
    conf = (DOCS / "configuration.md").read_text()
    documented = re.findall(r"^### (\w+)$", conf, re.M)
    assert sorted(documented) == sorted(names), \
        {"missing": sorted(set(names) - set(documented)),
         "not in the module": sorted(set(documented) - set(names))}
    for name in names:
        body = conf.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert re.search(rf"Syntax:  {name}\b", body), name
        assert "Default: " in body and "Context: " in body, name
        assert "```nginx" in body, f"{name}: no example"
    table = section("Directives")
    in_readme = set(re.findall(r"^\| `(\w+)", table, re.M))
    assert set(names) <= in_readme, sorted(set(names) - in_readme)


def test_readme_links_the_guide():
    for page in ("install", "configuration", "operations", "protocol"):
        assert f"(docs/{page}.md)" in README, page
        assert (DOCS / f"{page}.md").is_file()


# ---------------------------------------------------------------- protocol

PROTOCOL = (DOCS / "protocol.md").read_text()


def test_protocol_curl_examples(readme_nginx):
    sub, pub, _ = readme_nginx
    ran = 0
    for block in blocks(PROTOCOL, "console"):
        for cmd, want in commands_and_outputs(block):
            if not want:
                continue            # a command shown without its output
            if " -N " in cmd:
                cmd = cmd.replace("curl -N ", "curl -s -N --max-time 1 ")
                p = subprocess.run(
                    ["bash", "-c", cmd.replace("127.0.0.1:8080",
                                               f"127.0.0.1:{sub}")],
                    capture_output=True, text=True, timeout=10)
                got = p.stdout
            else:
                got = run(cmd.replace("curl ", "curl -s ", 1), sub, pub)
            assert same(got.strip("\n"), want.strip("\n")), (cmd, got)
            ran += 1
    assert ran >= 3


def test_protocol_python_client_is_the_example_file():
    (code,) = blocks(PROTOCOL, "python")
    assert code == (DOCS / "examples" / "sse_client.py").read_text()


def test_protocol_python_client_resumes_across_a_reload(readme_nginx):
    sub, pub, master = readme_nginx
    ch = "docs/py"
    client = subprocess.Popen(
        [sys.executable, str(DOCS / "examples" / "sse_client.py"),
         f"http://127.0.0.1:{sub}/events/{ch}", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: '"subscribers":1' in info(pub, ch), "the client")
        ids = []
        for i in range(2):
            ids.append(json.loads(run(
                f"curl -s -d 'before {i}' -H 'SSE-Event: note' "
                f"http://127.0.0.1:8081/publish/{ch}", sub, pub))["id"])
        time.sleep(0.3)
        os.kill(master, signal.SIGHUP)      # the stream ends; it resumes
        for i in range(2):
            ids.append(json.loads(run(
                f"curl -s -d $'after\\n{i}' "
                f"http://127.0.0.1:8081/publish/{ch}", sub, pub))["id"])
        out, err = client.communicate(timeout=20)
    finally:
        client.kill()
    lines = [json.loads(ln) for ln in out.splitlines()]
    events = [ln for ln in lines if "event" in ln]
    assert [e["id"] for e in events] == ids, (out, err)
    assert [e["data"] for e in events] == \
        ["before 0", "before 1", "after\n0", "after\n1"]
    assert [e["event"] for e in events] == ["note", "note", "message",
                                            "message"]
    assert not any("gap" in ln for ln in lines), out
    assert all(ln["error"]["reason"] == "shutdown"
               for ln in lines if "error" in ln), out


def test_protocol_curl_loop_keeps_the_last_id(readme_nginx, tmp_path):
    sub, pub, master = readme_nginx
    (loop,) = blocks(PROTOCOL, "sh")
    loop = loop.replace("127.0.0.1:8080", f"127.0.0.1:{sub}") \
        .replace("sleep 3", "sleep 0.2")
    p = subprocess.Popen(["bash", "-c", loop], cwd=tmp_path,
                         stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        wait_for(lambda: '"subscribers":1' in info(pub), "the loop")
        first = json.loads(run("curl -s -d one "
                               "http://127.0.0.1:8081/publish/demo",
                               sub, pub))["id"]
        wait_for(lambda: (tmp_path / "last-id").read_text().strip() == first,
                 "the loop to note the id")
        os.kill(master, signal.SIGHUP)
        time.sleep(0.5)
        second = json.loads(run("curl -s -d two "
                                "http://127.0.0.1:8081/publish/demo",
                                sub, pub))["id"]
        wait_for(lambda: (tmp_path / "last-id").read_text().strip() ==
                 second, "the loop to resume")
    finally:
        os.killpg(p.pid, signal.SIGTERM)
    out = p.communicate(timeout=5)[0]
    assert out.count("data: one") == 1 and out.count("data: two") == 1, out
