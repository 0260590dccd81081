// Node's `eventsource` package (4.x) against the module: receive, lose the
// TCP connection, reconnect by itself with Last-Event-ID, miss nothing.
//
//   node node_es.mjs '{"url": ".../events/ch", "pub": ".../publish/ch",
//                      "port": SUBSCRIBER_PORT, "names": ["greet"],
//                      "before": [{data, event}], "during": [...],
//                      "after": [...], "cut": "kill" | "server"}'
//
// Prints {"received", "ids": {before, during, after}, "connects",
//         "errors", "killed", "t_during_published"}.
import {EventSource} from 'eventsource';
import {publish, waitFor, waitSubscribers, killConnections, run} from './common.mjs';

const cfg = JSON.parse(process.argv[2]);

async function main() {
  const t0 = Date.now();
  const connects = [];  // each request EventSource makes
  const errors = [];
  const received = [];
  const opens = [];
  const recordingFetch = (url, init) => {
    const h = new Headers(init && init.headers);
    connects.push({t: Date.now() - t0, lastEventId: h.get('last-event-id')});
    return fetch(url, init);
  };
  const es = new EventSource(cfg.url, {fetch: recordingFetch});
  const record = (e) => received.push({type: e.type, data: e.data, id: e.lastEventId});
  es.onmessage = record;
  for (const name of cfg.names || []) es.addEventListener(name, record);
  es.onopen = () => opens.push(Date.now() - t0);
  es.onerror = (e) => errors.push({t: Date.now() - t0, message: e.message || null,
    readyState: es.readyState});

  const has = (ids) => () => ids.every((id) => received.some((r) => r.id === id));

  await waitFor(() => opens.length === 1, 10000, 'open');
  await waitSubscribers(cfg.pub, 1, 10000);
  const ids = {before: [], during: [], after: []};
  for (const ev of cfg.before) ids.before.push(await publish(cfg.pub, ev));
  await waitFor(has(ids.before), 10000, 'the events before the cut');

  // The network fails under the client (cut: "kill"), or the server ends
  // the stream itself (cut: "server", e.g. sse_stream_timeout).
  const killed = cfg.cut === 'server' ? 0 : killConnections(cfg.port);
  await waitFor(() => errors.length >= 1, 10000, 'the error event');
  // The server has seen the subscriber go: these are published while it
  // is away.
  await waitSubscribers(cfg.pub, 0, 10000);
  for (const ev of cfg.during) ids.during.push(await publish(cfg.pub, ev));
  const tDuring = Date.now() - t0;
  await waitFor(has(ids.during), 20000, 'the events published while away');
  await waitFor(() => opens.length === 2, 5000, 'the second open');
  for (const ev of cfg.after) ids.after.push(await publish(cfg.pub, ev));
  await waitFor(has(ids.after), 10000, 'the events after the reconnect');
  es.close();
  return {received, ids, connects, errors, opens, killed, t_during_published: tDuring,
          readyState: es.readyState};
}

run(main, 60000);
