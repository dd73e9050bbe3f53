// Fan-out check for k6 users: SUBS graphql-transport-ws subscribers on one channel,
// publishes through the public mutation at RATE/s, end-to-end latency per delivery.
//
// bench/fanout.py is the reference harness (baseline side by side, loss by offset,
// server CPU/RSS); this script is for people whose load tests already live in k6.
// Run it against a server you started (see bench/README.md):
//
//   k6 run -e BASE=http://127.0.0.1:8000 -e SUB_TOKEN=... -e PUB_TOKEN=... \
//          -e SUBS=200 -e RATE=10 -e DURATION=10 bench/k6/fanout.js
//
// Tokens: `edumatrix token --sub nw-cy --role student --institution northwood
// --department nw-math --classroom nw-math-101` (subscriber) and `--sub nw-ada
// --role teacher ... --classroom nw-math-101 --classroom nw-math-102` (publisher).
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
// k6 1.x ships the browser-style WebSocket API as k6/experimental/websockets
// (later releases also call it k6/websockets).
import { WebSocket } from 'k6/experimental/websockets';

const BASE = __ENV.BASE || 'http://127.0.0.1:8000';
const WS_URL = BASE.replace(/^http/, 'ws') + '/graphql';
const CHANNEL = __ENV.CHANNEL || 'institution:northwood:classroom:nw-math-101';
const SUBS = parseInt(__ENV.SUBS || '100', 10);
const RATE = parseInt(__ENV.RATE || '10', 10);
const DURATION = parseInt(__ENV.DURATION || '10', 10); // seconds of publishing
const SETTLE = parseInt(__ENV.SETTLE || '5', 10); // seconds for subscribers to connect
const BODY = 'b'.repeat(64); // the 64-byte payload

const SUBSCRIPTION =
  'subscription($name:String!){ channel(name:$name){ offset epoch channel kind ' +
  'publishedAt recovered announcement{ id title body priority } } }';
const MUTATION =
  'mutation($input: PublishAnnouncementInput!){ publishAnnouncement(input:$input){ id } }';

const latency = new Trend('fanout_latency', true);
const received = new Counter('fanout_received');
const duplicates = new Counter('fanout_duplicates');
const reordered = new Counter('fanout_reordered');
const published = new Counter('fanout_published');
const handshake = new Trend('fanout_handshake', true);

export const options = {
  scenarios: {
    subscribers: {
      executor: 'per-vu-iterations',
      exec: 'subscriber',
      vus: SUBS,
      iterations: 1,
      maxDuration: `${SETTLE + DURATION + 30}s`,
    },
    publisher: {
      executor: 'constant-arrival-rate',
      exec: 'publisher',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION}s`,
      startTime: `${SETTLE}s`,
      preAllocatedVUs: 4,
      maxVUs: 16,
    },
  },
  thresholds: {
    fanout_duplicates: ['count==0'],
    fanout_reordered: ['count==0'],
    checks: ['rate==1'],
  },
};

export function subscriber() {
  const started = Date.now();
  const ws = new WebSocket(WS_URL, 'graphql-transport-ws');
  const seen = new Set();
  let lastOffset = -1;
  ws.onopen = () => {
    ws.send(JSON.stringify({
      type: 'connection_init',
      payload: { authorization: `Bearer ${__ENV.SUB_TOKEN}` },
    }));
  };
  ws.onmessage = (event) => {
    const now = Date.now();
    const msg = JSON.parse(event.data);
    if (msg.type === 'connection_ack') {
      handshake.add(now - started);
      ws.send(JSON.stringify({
        id: '1',
        type: 'subscribe',
        payload: { query: SUBSCRIPTION, variables: { name: CHANNEL } },
      }));
    } else if (msg.type === 'next') {
      const ok = check(msg.payload, { 'next has data': (p) => !p.errors && p.data });
      if (!ok) return;
      const ev = msg.payload.data.channel;
      const [tag, seq, sentMs] = ev.announcement.title.split('|');
      if (tag !== 'k6') return; // someone else's message on the channel
      if (seen.has(seq)) duplicates.add(1);
      seen.add(seq);
      if (ev.offset <= lastOffset) reordered.add(1);
      lastOffset = ev.offset;
      latency.add(now - parseInt(sentMs, 10));
      received.add(1);
    } else if (msg.type === 'ping') {
      ws.send(JSON.stringify({ type: 'pong' }));
    } else if (msg.type === 'error') {
      check(msg, { 'no subscription error': () => false });
    }
  };
  ws.onclose = (event) => {
    check(event, { 'closed by us': () => Date.now() - started >= (SETTLE + DURATION) * 1000 });
  };
  // Stay subscribed until publishing ended plus a few seconds for stragglers.
  setTimeout(() => ws.close(), (SETTLE + DURATION + 5) * 1000);
}

let seq = 0;
export function publisher() {
  seq += 1;
  const title = `k6|${__VU}-${seq}|${Date.now()}`;
  const res = http.post(
    `${BASE}/graphql`,
    JSON.stringify({
      query: MUTATION,
      variables: { input: { channel: CHANNEL, title, body: BODY, priority: 'NORMAL' } },
    }),
    { headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${__ENV.PUB_TOKEN}` } },
  );
  const ok = check(res, {
    'publish 200': (r) => r.status === 200,
    'publish has no errors': (r) => !r.json('errors'),
  });
  if (ok) published.add(1);
}

export function handleSummary(data) {
  const pub = data.metrics.fanout_published ? data.metrics.fanout_published.values.count : 0;
  const got = data.metrics.fanout_received ? data.metrics.fanout_received.values.count : 0;
  const lat = data.metrics.fanout_latency ? data.metrics.fanout_latency.values : {};
  const expected = pub * SUBS;
  const lines = [
    `fan-out: ${SUBS} subscribers, ${pub} publishes acknowledged, ` +
      `${got}/${expected} deliveries (${expected - got} missing)`,
    `latency ms: p50 ${lat.med} p90 ${lat['p(90)']} p95 ${lat['p(95)']} max ${lat.max}`,
  ];
  const out = { stdout: lines.join('\n') + '\n' };
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data, null, 2); // -e SUMMARY=path.json
  return out;
}
