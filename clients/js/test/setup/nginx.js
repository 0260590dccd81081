// Vitest globalSetup: a real nginx with the built module (and the demo's
// pretend model, examples/ai_model.py) on free ports, for every test file.
// Started and stopped by pid; teardown fails the run when the error log
// holds an alert, an emerg or a crit.

import { spawn, spawnSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");
// SSE_MODULE and SSE_PRELOAD: another build of the module and the runtime to
// preload into nginx only (make test-asan, as in t/conftest.py); reports go
// to ${dir}/sanitizer.PID and fail the run.
const MODULE = process.env.SSE_MODULE || path.join(ROOT, "build", "ngx_http_sse_module.so");
const PRELOAD = process.env.SSE_PRELOAD || "";
const NGINX = "/usr/sbin/nginx";
const PYTHON = "/usr/bin/python3";
const BAD_LOG = /\[(alert|emerg|crit)\]|AddressSanitizer|runtime error/;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const c = net.connect(port, "127.0.0.1");
    c.on("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.on("error", () => resolve(false));
  });
}

async function until(pred, what, timeout = 10000) {
  const deadline = Date.now() + timeout;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function alive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

function children(pid) {
  const out = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) out.push(Number(d));
    } catch {
      /* gone */
    }
  }
  return out;
}

function conf({ dir, sub, pub, model }) {
  const user = process.getuid && process.getuid() === 0 ? "user root;" : "";
  return `load_module ${MODULE};
worker_processes 2;
error_log ${dir}/error.log info;
pid ${dir}/nginx.pid;
daemon on;
master_process on;
${user}

events { worker_connections 1024; }

http {
    access_log off;
    client_body_temp_path ${dir}/body;
    proxy_temp_path ${dir}/proxy;
    fastcgi_temp_path ${dir}/fastcgi;
    uwsgi_temp_path ${dir}/uwsgi;
    scgi_temp_path ${dir}/scgi;

    sse_zone zone=sse:8m;
    sse_auth_jwt_key_file ${dir}/jwks.json;

    server {
        listen 127.0.0.1:${sub};

        location ~ ^/events/(?<ch>[\\w.:@~-]+)$ {
            sse_subscribe;
            sse_channel $ch;
            sse_retry 200;
            sse_initial_events 0;
        }

        location = /multi {
            sse_subscribe;
            sse_channel $arg_channels split=, unescape;
            sse_retry 200;
        }

        # Streams end after 1 s (EventSource reconnects by itself), and
        # while ${dir}/down/CHANNEL exists the answer is a 503, after which
        # EventSource gives up and connect() has to take over.
        location ~ ^/flaky/(?<ch>[\\w.:@~-]+)$ {
            if (-f ${dir}/down/$ch) {
                return 503;
            }
            sse_subscribe;
            sse_channel $ch;
            sse_retry 100;
            sse_stream_timeout 1s;
        }

        # Signed tokens (HS256, the key of ${dir}/jwks.json: env.jwtKey),
        # from ?token= or the cookie sse_token.
        location ~ ^/auth/(?<ch>[\\w.:@~-]+)$ {
            sse_subscribe;
            sse_channel $ch;
            sse_retry 100;
            sse_auth_jwt test token=$arg_token;
        }
        location ~ ^/authc/(?<ch>[\\w.:@~-]+)$ {
            sse_subscribe;
            sse_channel $ch;
            sse_retry 100;
            sse_auth_jwt test token=$cookie_sse_token;
        }

        # The demo's pretend model (Accept: text/event-stream: a direct stream).
        location = /ask {
            proxy_pass http://127.0.0.1:${model}/ask;
            proxy_buffering off;
        }
    }

    server {
        listen 127.0.0.1:${pub};

        location ~ ^/publish/(?<ch>[\\w.:@~-]+)$ {
            sse_publish;
            sse_channel $ch;
            client_max_body_size 0;
        }

        location = /status { sse_status; }
    }
}
`;
}

export default async function setup({ provide }) {
  if (!fs.existsSync(MODULE)) throw new Error(`${MODULE} is missing: run \`make build\` first`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ngx-sse-client-"));
  fs.mkdirSync(path.join(dir, "down"));
  // An HMAC key for the token tests (test/helpers.js signs with it).
  const jwtKey = crypto.randomBytes(32).toString("base64url");
  fs.writeFileSync(path.join(dir, "jwks.json"), JSON.stringify({ keys: [{ kty: "oct", kid: "test", k: jwtKey }] }));
  const [sub, pub, model] = [await freePort(), await freePort(), await freePort()];
  fs.writeFileSync(path.join(dir, "nginx.conf"), conf({ dir, sub, pub, model }));

  const modelLog = fs.openSync(path.join(dir, "ai_model.log"), "w");
  const modelProc = spawn(
    PYTHON,
    [path.join(ROOT, "examples", "ai_model.py"), "--port", String(model), "--publish", `http://127.0.0.1:${pub}/publish/`, "--delay", "0.01"],
    { stdio: ["ignore", modelLog, modelLog] },
  );

  const env = { ...process.env };
  if (PRELOAD) {
    env.LD_PRELOAD = PRELOAD;
    for (const v of ["ASAN_OPTIONS", "UBSAN_OPTIONS"]) {
      env[v] = [env[v], `log_path=${dir}/sanitizer`].filter(Boolean).join(":");
    }
  }
  const r = spawnSync(NGINX, ["-p", `${dir}/`, "-c", path.join(dir, "nginx.conf"), "-e", path.join(dir, "error.log")], {
    encoding: "utf8",
    timeout: 30000,
    env,
  });
  if (r.status !== 0) {
    modelProc.kill("SIGTERM");
    throw new Error(`nginx failed to start: ${r.stderr}`);
  }
  let master = 0;
  await until(() => {
    try {
      master = Number(fs.readFileSync(path.join(dir, "nginx.pid"), "utf8").trim());
    } catch {
      /* not yet */
    }
    return master > 0;
  }, "nginx's pid file");
  await until(async () => (await canConnect(sub)) && (await canConnect(pub)) && (await canConnect(model)), "the ports");

  provide("env", { dir, sub, pub, model, master, jwtKey });

  return async function teardown() {
    const procs = [master, ...children(master)];
    try {
      process.kill(master, "SIGQUIT");
    } catch {
      /* already gone */
    }
    modelProc.kill("SIGTERM");
    await until(() => !procs.some(alive), "nginx to stop", 10000).catch(() => {
      for (const p of procs) {
        try {
          process.kill(p, "SIGKILL");
        } catch {
          /* gone */
        }
      }
    });
    const log = fs.readFileSync(path.join(dir, "error.log"), "utf8");
    const bad = `${log}\n${r.stderr}`.split("\n").filter((l) => BAD_LOG.test(l));
    for (const f of fs.readdirSync(dir).filter((n) => n.startsWith("sanitizer."))) {
      const text = fs.readFileSync(path.join(dir, f), "utf8").trim();
      if (text) bad.push(`${f}:`, ...text.split("\n").slice(0, 30));
    }
    const modelOut = fs.readFileSync(path.join(dir, "ai_model.log"), "utf8");
    if (bad.length || /Traceback/.test(modelOut)) {
      throw new Error(`problems in ${dir}:\n${bad.slice(0, 20).join("\n")}\n${modelOut.slice(-2000)}`);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  };
}
