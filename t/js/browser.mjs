// Headless Debian Chromium (through playwright-core; never a downloaded
// browser) runs a page whose EventSource records what it gets.
//
//   node browser.mjs '{"page": "http://127.0.0.1:P/page/es.html",
//                      "es": "/events/ch" or an absolute URL,
//                      "withCredentials": false, "names": ["greet"],
//                      "pub": "http://127.0.0.1:Q/publish/ch",
//                      "port": P_OF_THE_STREAM,
//                      "mode": "resume" | "denied",
//                      "before": [{data, event}], "during": [...], "after": [...]}'
//
// resume: receive `before`; the test kills the stream's TCP connection
//   (ss -K; the page stays); publish `during` while the browser is away;
//   it reconnects by itself; publish `after`.
// denied: wait for the error, publish `before`, and see that nothing comes.
// Prints {"rec": {opens, errors, events, loads}, "ids", ...}.
import {chromium} from 'playwright-core';
import {publish, waitFor, waitSubscribers, killConnections, sleep, run} from './common.mjs';

const cfg = JSON.parse(process.argv[2]);

const LAUNCH = {
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
};

async function main() {
  const browser = await chromium.launch(LAUNCH);
  const console_ = [];
  try {
    const page = await browser.newPage();
    page.on('console', (m) => console_.push(m.text()));
    const rec = () => page.evaluate(() => window.rec);
    const hash = encodeURIComponent(JSON.stringify({
      es: cfg.es, withCredentials: !!cfg.withCredentials, names: cfg.names || []}));
    await page.goto(`${cfg.page}#${hash}`, {timeout: 15000});
    const has = (ids) => async () => {
      const r = await rec();
      return ids.every((id) => r.events.some((e) => e.id === id));
    };
    const ids = {before: [], during: [], after: []};

    if (cfg.mode === 'denied') {
      await waitFor(async () => (await rec()).errors.length >= 1, 10000, 'the error event');
      for (const ev of cfg.before) ids.before.push(await publish(cfg.pub, ev));
      // Bounded: a short look for anything that should not come.
      await sleep(500);
      return {rec: await rec(), ids, console: console_};
    }

    await waitFor(async () => (await rec()).opens.length === 1, 10000, 'open');
    await waitSubscribers(cfg.pub, 1, 10000);
    for (const ev of cfg.before) ids.before.push(await publish(cfg.pub, ev));
    await waitFor(has(ids.before), 10000, 'the events before the cut');

    const killed = killConnections(cfg.port);
    await waitFor(async () => (await rec()).errors.length >= 1, 10000, 'the error event');
    await waitSubscribers(cfg.pub, 0, 10000);
    for (const ev of cfg.during) ids.during.push(await publish(cfg.pub, ev));
    const tDuring = await page.evaluate(() => performance.now() - window.t0);
    await waitFor(has(ids.during), 20000, 'the events published while away');
    await waitFor(async () => (await rec()).opens.length === 2, 5000, 'the second open');
    for (const ev of cfg.after) ids.after.push(await publish(cfg.pub, ev));
    await waitFor(has(ids.after), 10000, 'the events after the reconnect');
    // Closing the stream lets nginx log the reconnect request.
    await page.evaluate(() => window.es.close());
    await waitSubscribers(cfg.pub, 0, 10000);
    return {rec: await rec(), ids, killed, t_during_published: tDuring, console: console_};
  } finally {
    await browser.close();
  }
}

run(main, 75000);
