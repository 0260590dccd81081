// eventsource-parser as a byte-level oracle of the module's wire format.
//
//   node oracle.mjs '{"raw_b64": "...", "runs": [{"seed": 1, "max": 7}, ...]}'
//
// For each run, the raw bytes are cut at random places (sizes 1..max; max 0
// means "all at once"), each piece decoded as a browser does (streaming
// UTF-8, so a cut inside a character is fine) and fed to the parser.
// Prints {"runs": [{events, retries, comments, errors, cuts}]} as JSON.
import {createParser} from 'eventsource-parser';

const cfg = JSON.parse(process.argv[2]);
const raw = Buffer.from(cfg.raw_b64, 'base64');

function prng(seed) {
  // mulberry32: deterministic, so a failure can be replayed
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const runs = [];
for (const run of cfg.runs) {
  const events = [];
  const retries = [];
  const comments = [];
  const errors = [];
  const parser = createParser({
    onEvent: (e) => events.push({id: e.id ?? null, event: e.event ?? null, data: e.data}),
    onRetry: (ms) => retries.push(ms),
    onComment: (c) => comments.push(c),
    onError: (err) => errors.push(String(err && err.message || err)),
  });
  const decoder = new TextDecoder('utf-8');
  const rand = prng(run.seed);
  let at = 0;
  let cuts = 0;
  while (at < raw.length) {
    const n = run.max > 0 ? 1 + Math.floor(rand() * run.max) : raw.length;
    const piece = raw.subarray(at, Math.min(raw.length, at + n));
    at += piece.length;
    cuts++;
    const text = decoder.decode(piece, {stream: true});
    if (text.length) parser.feed(text);
  }
  const tail = decoder.decode();
  if (tail.length) parser.feed(tail);
  runs.push({seed: run.seed, max: run.max, cuts, events, retries, comments, errors});
}
process.stdout.write(JSON.stringify({runs}) + '\n');
