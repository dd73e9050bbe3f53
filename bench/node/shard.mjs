// One subscriber shard in Node: N graphql-ws clients (over the `ws` package) in one process.
//
// Why this exists: at 5,000 subscribers x 10 msg/s the Python shard
// (bench/subscribers.py) needs a whole core and the latency then measures the
// client. Issue 4 asked for "a Node graphql-ws client on the other core"; this is
// that client, speaking the same JSON-lines protocol to the driver, with the same
// checks and the same report fields as subscribers.py (read that file first):
//
//   stdin:  {"cmd":"phase","name":...}  {"cmd":"report","acked":[...]}  {"cmd":"close"}
//   stdout: ready, progress (every 0.1 s), phase, report, closed, connect_error
//
// Every message title is `phase|seq|t_ns`, t_ns being Python's time.monotonic_ns()
// in the driver. process.hrtime.bigint() reads the same CLOCK_MONOTONIC (libuv's
// uv_hrtime), so receipt minus t_ns is the latency across processes.
//
// One createClient() per connection (lazy: false), operation ids as the library
// assigns them, connectionParams {authorization: "Bearer <token>"}. The library
// answers pings with pongs. It is told never to reconnect: a silent reconnect would
// hide a server-side close, which the benchmark must report.
//
// Node cannot set its own CPU affinity: the driver starts this under `taskset -c`.
// --cpu is accepted so both shards take the same arguments.

import { parseArgs } from "node:util";
import { createInterface } from "node:readline";
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const SUBSCRIPTION =
  "subscription($name:String!){ channel(name:$name){ offset epoch channel kind " +
  "publishedAt recovered announcement{ id title body priority } } }";
const PROGRESS_EVERY_MS = 100;
const TIMEOUT_MS = 30_000; // open and ack, like open_timeout=30 / wait_for(recv, 30)
const CLOSE_WAIT_MS = 10_000; // websockets' default close_timeout

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    channel: { type: "string" },
    count: { type: "string" },
    concurrency: { type: "string", default: "50" },
    cpu: { type: "string" },
    deflate: { type: "boolean", default: false },
  },
});
for (const name of ["url", "token", "channel", "count"]) {
  if (args[name] === undefined) {
    process.stderr.write(`shard.mjs: --${name} is required\n`);
    process.exit(2);
  }
}
const COUNT = Number.parseInt(args.count, 10);
const CONCURRENCY = Number.parseInt(args.concurrency, 10);

// The graphql-ws client builds its socket as `new Impl(url, protocol)`; options
// go in through a subclass. No permessage-deflate unless asked, like the Python
// shard (ws would offer it by default).
class Socket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols, { perMessageDeflate: args.deflate, handshakeTimeout: TIMEOUT_MS });
  }
}

// -- output ---------------------------------------------------------------------------
process.stdout.on("error", () => process.exit(1)); // the driver is gone: nobody to report to
function emit(event, done) {
  process.stdout.write(JSON.stringify(event) + "\n", done);
}

// -- state ------------------------------------------------------------------------------
let phase = "";
let latencies = [];
let received = 0;
let firstNs = 0n;
let lastNs = 0n;
const subs = []; // connected subscribers only, like subscribers.py
const clients = [];

function newSub() {
  // offsets/seqs of the current phase; live: received anything since connecting;
  // close: "code reason" once the server closed us (or "error ..."/"complete").
  return { offsets: [], seqs: [], live: false, close: null, errors: 0, closedEvent: null };
}

function closeText(event) {
  // ws reports 1006 when no close frame arrived (the socket just ended).
  if (!event || event.code === 1006) return "closed without a close frame";
  return `${event.code} ${event.reason ?? ""}`;
}

// The hot path: one call per delivery. Stay cheap, the client core must outrun the server.
function onNext(sub, payload) {
  const now = process.hrtime.bigint();
  const event = payload.data ? payload.data.channel : null;
  if (payload.errors || !event) {
    sub.errors += 1;
    return;
  }
  sub.live = true;
  const title = event.announcement.title;
  const a = title.indexOf("|");
  const b = title.indexOf("|", a + 1);
  if (title.slice(0, a) !== phase) return;
  sub.offsets.push(event.offset);
  sub.seqs.push(Number(title.slice(a + 1, b)));
  latencies.push(Number(now - BigInt(title.slice(b + 1))) / 1e6);
  received += 1;
  if (firstNs === 0n) firstNs = now;
  lastNs = now;
}

// Open one connection: resolves once acked (the subscribe follows) or failed.
function open(handshakes) {
  return new Promise((resolve) => {
    const sub = newSub();
    let connected = false;
    let settled = false;
    const t0 = process.hrtime.bigint();
    const fail = (why) => {
      if (settled) return;
      settled = true;
      emit({ event: "connect_error", error: String(why).slice(0, 200) });
      client.dispose().catch(() => {});
      resolve();
    };
    const client = createClient({
      url: args.url,
      webSocketImpl: Socket,
      lazy: false,
      connectionParams: { authorization: `Bearer ${args.token}` },
      connectionAckWaitTimeout: TIMEOUT_MS,
      retryAttempts: 0,
      shouldRetry: () => false,
      onNonLazyError: () => {}, // reported through on.closed / on.error below
      on: {
        connected: () => {
          connected = settled = true;
          handshakes.push(Number(process.hrtime.bigint() - t0) / 1e6);
          subs.push(sub);
          clients.push(client);
          resolve();
        },
        error: (err) => {
          if (!connected) fail(err && err.message ? err.message : err);
        },
        closed: (event) => {
          if (!connected) return fail(`closed before ack: ${closeText(event)}`);
          sub.closedEvent = event;
          if (sub.close === null) sub.close = closeText(event);
          // A server close with 1000 would make the library reconnect while a
          // subscription is active; disposing first stops that (it sets `disposed`).
          client.dispose().catch(() => {});
        },
      },
    });
    client.subscribe(
      { query: SUBSCRIPTION, variables: { name: args.channel } },
      {
        next: (payload) => onNext(sub, payload),
        error: (err) => {
          // An `error` message carries a list of GraphQL errors; a close event
          // (already recorded by on.closed) comes here too when the socket ends.
          if (Array.isArray(err)) {
            sub.errors += 1;
            if (sub.close === null) sub.close = `error ${JSON.stringify(err).slice(0, 120)}`;
          }
        },
        complete: () => {
          // Called for a server `complete` (socket still open) and after our own close.
          if (connected && sub.closedEvent === null) {
            sub.errors += 1;
            if (sub.close === null) sub.close = "complete";
          }
        },
      },
    );
  });
}

async function connectAll() {
  const handshakes = [];
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let next = 0;
  async function worker() {
    while (next < COUNT) {
      next += 1;
      await open(handshakes);
    }
  }
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, COUNT) }, worker));
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  handshakes.sort((x, y) => x - y);
  emit({
    event: "ready",
    connected: subs.length,
    failed: COUNT - subs.length,
    wall_s: wall,
    cpu_s: (cpu.user + cpu.system) / 1e6, // of the connects only, not of Node's start-up
    handshake_p50_ms: handshakes.length ? handshakes[handshakes.length >> 1] : null,
  });
}

function report(acked) {
  const expected = new Set(acked);
  let lost = 0;
  let dupSeq = 0;
  let dupOff = 0;
  let gaps = 0;
  let reordered = 0;
  let unexpected = 0;
  let errors = 0;
  const closes = {};
  for (const sub of subs) {
    const got = new Set(sub.seqs);
    for (const seq of expected) if (!got.has(seq)) lost += 1;
    for (const seq of got) if (!expected.has(seq)) unexpected += 1;
    dupSeq += sub.seqs.length - got.size;
    const offsets = new Set(sub.offsets);
    dupOff += sub.offsets.length - offsets.size;
    for (let i = 1; i < sub.offsets.length; i++) {
      if (sub.offsets[i] <= sub.offsets[i - 1]) reordered += 1;
    }
    if (sub.offsets.length) {
      let lo = Infinity;
      let hi = -Infinity;
      for (const off of offsets) {
        if (off < lo) lo = off;
        if (off > hi) hi = off;
      }
      gaps += hi - lo + 1 - offsets.size;
    }
    errors += sub.errors;
    if (sub.close !== null) closes[sub.close] = (closes[sub.close] ?? 0) + 1;
  }
  return {
    event: "report",
    phase,
    subscribers: subs.length,
    received,
    latencies_ms: latencies.map((x) => Math.round(x * 1000) / 1000),
    first_ns: Number(firstNs),
    last_ns: Number(lastNs),
    lost,
    duplicated: dupSeq,
    duplicated_offsets: dupOff,
    offset_gaps: gaps,
    reordered,
    unexpected,
    errors,
    closed: closes,
  };
}

function startPhase(name) {
  phase = name;
  latencies = [];
  received = 0;
  firstNs = lastNs = 0n;
  for (const sub of subs) {
    sub.offsets = [];
    sub.seqs = [];
  }
}

function progress() {
  let closed = 0;
  let live = 0;
  for (const sub of subs) {
    if (sub.close !== null) closed += 1;
    if (sub.live) live += 1;
  }
  emit({ event: "progress", received, live, closed });
}

async function closeAll() {
  // Close every socket and wait for its close event, CLOSE_WAIT_MS at most.
  await Promise.all(clients.map((c) => c.dispose().catch(() => {})));
  const deadline = Date.now() + CLOSE_WAIT_MS;
  while (Date.now() < deadline && subs.some((s) => s.closedEvent === null)) {
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function serve() {
  await connectAll();
  const ticker = setInterval(progress, PROGRESS_EVERY_MS);
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  try {
    for await (const line of lines) {
      if (!line.trim()) continue;
      const cmd = JSON.parse(line);
      if (cmd.cmd === "phase") {
        startPhase(cmd.name);
        emit({ event: "phase", name: cmd.name });
      } else if (cmd.cmd === "report") {
        emit(report(cmd.acked));
      } else if (cmd.cmd === "close") {
        break;
      }
    }
  } finally {
    clearInterval(ticker);
    await closeAll();
    // exit only once the last line (maybe a large report before it) is written
    emit({ event: "closed" }, () => process.exit(0));
  }
}

serve().catch((err) => {
  process.stderr.write(`shard.mjs: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
