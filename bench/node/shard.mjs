// One subscriber shard in Node: N graphql-ws clients (over the `ws` package), or N
// graphql-sse streams with --transport sse, in one process.
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
// The transport lives in its own module, each with one `open()` (ws.mjs:
// graphql-transport-ws; sse.mjs: graphql-sse, distinct connections mode; pusher.mjs:
// the Pusher protocol on /app/{key}); only the
// chosen one is loaded, so a ws run does not need graphql-sse and the other way round.
//
// Node cannot set its own CPU affinity: the driver starts this under `taskset -c`.
// --cpu is accepted so both shards take the same arguments.

import { parseArgs } from "node:util";
import { createInterface } from "node:readline";

const SUBSCRIPTION =
  "subscription($name:String!){ channel(name:$name){ offset epoch channel kind " +
  "publishedAt recovered announcement{ id title body priority } } }";
const PROGRESS_EVERY_MS = 100;
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
    transport: { type: "string", default: "ws" },
  },
});
for (const name of ["url", "token", "channel", "count"]) {
  if (args[name] === undefined) {
    process.stderr.write(`shard.mjs: --${name} is required\n`);
    process.exit(2);
  }
}
if (!["ws", "sse", "pusher"].includes(args.transport)) {
  process.stderr.write(`shard.mjs: --transport must be ws, sse or pusher, not ${args.transport}\n`);
  process.exit(2);
}
const COUNT = Number.parseInt(args.count, 10);
const CONCURRENCY = Number.parseInt(args.concurrency, 10);
const transport = await import(`./${args.transport}.mjs`);

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
const connections = []; // what transport.open() resolved with, one per sub: {dispose}

function newSub() {
  // offsets/seqs of the current phase; live: received anything since connecting;
  // close: why the server ended it ("code reason", "error ...", "complete"), set
  // once by the transport; ended: the connection is gone (whoever closed it).
  return { offsets: [], seqs: [], live: false, close: null, errors: 0, ended: false };
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

// Open one connection (WebSocket or event stream) and subscribe; a failure is
// reported and not retried, like subscribers.py.
async function connectOne(handshakes) {
  const sub = newSub();
  const t0 = process.hrtime.bigint();
  const outcome = await transport.open(args, SUBSCRIPTION, sub, (payload) => onNext(sub, payload));
  if (typeof outcome === "string") {
    emit({ event: "connect_error", error: outcome.slice(0, 200) });
    return;
  }
  handshakes.push(Number(process.hrtime.bigint() - t0) / 1e6);
  subs.push(sub);
  connections.push(outcome);
}

async function connectAll() {
  const handshakes = [];
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  let next = 0;
  async function worker() {
    while (next < COUNT) {
      next += 1;
      await connectOne(handshakes);
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
  // Close every connection and wait until each has ended, CLOSE_WAIT_MS at most.
  await Promise.all(connections.map((c) => c.dispose()));
  const deadline = Date.now() + CLOSE_WAIT_MS;
  while (Date.now() < deadline && subs.some((s) => !s.ended)) {
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
