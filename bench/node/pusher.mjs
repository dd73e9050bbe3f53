// The Pusher side of the shard (shard.mjs): one Pusher-protocol-7 connection per
// subscriber on /app/{key}, over the `ws` package, subscribed to the private name
// of the bench channel with the signature /pusher/auth gives (api/pusher.py).
//
// Why a raw protocol client and not pusher-js: the bench checks every delivery's
// offset for loss, duplicates and order, and pusher-js only passes on the data of
// an event; a subscribe with `positions: true` (ours, ignored by Pusher) puts the
// offset into the data, and pusher-js cannot send it. The frames the server writes
// are the same for both (tests/node drives pusher-js itself against the server).
// Per connection: connect, connection_established, POST /pusher/auth, subscribe,
// subscription_succeeded; pings are answered; no reconnects (a silent reconnect
// would hide a server-side close, which the benchmark must report).

import WebSocket from "ws";

const TIMEOUT_MS = 30_000;
export const APP_KEY = "benchkey0001";

function closeText(code, reason) {
  if (code === 1006) return "closed without a close frame";
  return `${code} ${reason ?? ""}`;
}

// `institution:x:classroom:y` as Pusher spells it: `private-institution.x.classroom.y`
// (a `.` inside an id is written `=`; streams/pusher_names.py).
function pusherName(channel) {
  return "private-" + channel.split(":").map((p) => p.replaceAll(".", "=")).join(".");
}

// Open one connection and subscribe. Resolves, once subscribed, with {dispose}, or
// with a string saying why it failed. From then on it records the connection's end
// on `sub`: close (a reason, set once), errors, ended. `onNext` gets what
// graphql-ws would give for the same message ({data: {channel: {offset, ...}}}).
export function open(args, _query, sub, onNext) {
  const base = new URL(args.url).origin; // the shard is given .../graphql
  const name = pusherName(args.channel);
  const socket = new WebSocket(
    `${base.replace(/^http/, "ws")}/app/${APP_KEY}?protocol=7&client=bench&version=1`,
    { perMessageDeflate: args.deflate, handshakeTimeout: TIMEOUT_MS },
  );
  return new Promise((resolve) => {
    let subscribed = false;
    let settled = false;
    const timer = setTimeout(() => fail(`not subscribed within ${TIMEOUT_MS} ms`), TIMEOUT_MS);
    const fail = (why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.terminate();
      resolve(String(why));
    };
    socket.on("error", (err) => fail(err.message));
    socket.on("close", (code, reason) => {
      if (!subscribed) return fail(`closed before subscribing: ${closeText(code, reason)}`);
      sub.ended = true;
      if (sub.close === null) sub.close = closeText(code, reason.toString());
    });
    socket.on("message", async (raw) => {
      const text = raw.toString();
      // The hot path: an event of the channel, tested for cheaply first.
      if (subscribed && text.startsWith('{"event":"announcement"')) {
        const frame = JSON.parse(text);
        const body = JSON.parse(frame.data); // {data: {announcement}, offset, epoch}
        onNext({ data: { channel: { offset: body.offset, announcement: body.data.announcement } } });
        return;
      }
      const frame = JSON.parse(text);
      switch (frame.event) {
        case "pusher:connection_established": {
          const socketId = JSON.parse(frame.data).socket_id;
          try {
            const response = await fetch(`${base}/pusher/auth`, {
              method: "POST",
              headers: {
                authorization: `Bearer ${args.token}`,
                "content-type": "application/x-www-form-urlencoded",
              },
              body: new URLSearchParams({ socket_id: socketId, channel_name: name, app_key: APP_KEY }),
            });
            if (response.status !== 200) {
              return fail(`/pusher/auth answered ${response.status}: ${await response.text()}`);
            }
            const { auth } = await response.json();
            socket.send(
              JSON.stringify({
                event: "pusher:subscribe",
                data: { channel: name, auth, positions: true },
              }),
            );
          } catch (err) {
            fail(`/pusher/auth failed: ${err.message}`);
          }
          break;
        }
        case "pusher_internal:subscription_succeeded":
          subscribed = settled = true;
          clearTimeout(timer);
          resolve({ dispose: () => socket.close(1000) });
          break;
        case "pusher:subscription_error":
          fail(`subscription_error ${JSON.stringify(frame.data).slice(0, 160)}`);
          break;
        case "pusher:ping":
          socket.send('{"event":"pusher:pong","data":{}}');
          break;
        case "pusher:error":
          if (!subscribed) return fail(`pusher:error ${JSON.stringify(frame.data)}`);
          sub.errors += 1;
          if (sub.close === null) sub.close = `pusher:error ${JSON.stringify(frame.data).slice(0, 120)}`;
          break;
        default:
          if (subscribed) sub.errors += 1; // an event the bench never publishes
      }
    });
  });
}
