// Shared by the scripts pytest runs: publishing, polling, killing
// connections, bounded waits. Every wait has a deadline.
import {execFileSync} from 'node:child_process';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function waitFor(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out (${ms} ms) waiting for ${what}`);
    await sleep(20);
  }
}

// POSTs one event to a publisher URL; returns the module's id.
export async function publish(pubUrl, {data, event}) {
  const headers = {};
  if (event) headers['SSE-Event'] = event;
  const r = await fetch(pubUrl, {method: 'POST', headers, body: data});
  const text = await r.text();
  if (r.status !== 202) throw new Error(`publish: ${r.status} ${text}`);
  return JSON.parse(text).id;
}

export async function channelInfo(pubUrl) {
  const r = await fetch(pubUrl);
  return r.status === 200 ? r.json() : null;
}

export async function waitSubscribers(pubUrl, n, ms) {
  return waitFor(async () => {
    const i = await channelInfo(pubUrl);
    return i !== null && i.subscribers === n;
  }, ms, `${n} subscribers at ${pubUrl}`);
}

// Destroys (RST) the established client connections to 127.0.0.1:port,
// as a network failure would. Needs `ss -K` (kernel SOCK_DESTROY).
export function killConnections(port) {
  const out = execFileSync('ss', ['-K', '-t', '-n', 'state', 'established',
    'dst', '127.0.0.1', 'dport', '=', String(port)], {encoding: 'utf8', timeout: 10000});
  return Math.max(0, out.trim().split('\n').length - 1);
}

export function done(result) {
  process.stdout.write(JSON.stringify(result) + '\n');
}

// Runs main with a hard deadline; prints {"error": ...} and exits 1 on failure.
export function run(main, ms) {
  const timer = setTimeout(() => {
    process.stdout.write(JSON.stringify({error: `script deadline ${ms} ms`}) + '\n');
    process.exit(2);
  }, ms);
  main().then((r) => {
    clearTimeout(timer);
    done(r);
    process.exit(0);
  }, (e) => {
    clearTimeout(timer);
    process.stderr.write(String(e && e.stack || e) + '\n');
    process.exit(1);
  });
}
