// The graphql-transport-ws side of the shard (shard.mjs): one graphql-ws client per
// connection over the `ws` package.
//
// One createClient() per connection (lazy: false), operation ids as the library
// assigns them, connectionParams {authorization: "Bearer <token>"}. The library
// answers pings with pongs. It is told never to reconnect: a silent reconnect would
// hide a server-side close, which the benchmark must report.

import { createClient } from "graphql-ws";
import WebSocket from "ws";

const TIMEOUT_MS = 30_000; // open and ack, like open_timeout=30 / wait_for(recv, 30)

function closeText(event) {
  // ws reports 1006 when no close frame arrived (the socket just ended).
  if (!event || event.code === 1006) return "closed without a close frame";
  return `${event.code} ${event.reason ?? ""}`;
}

// Open one connection and subscribe. Resolves, once acked (the subscribe follows),
// with {dispose}, or with a string saying why it failed. From then on it records
// the connection's end on `sub`: close (a reason, set once), errors, ended.
export function open(args, query, sub, onNext) {
  // The graphql-ws client builds its socket as `new Impl(url, protocol)`; options
  // go in through a subclass. No permessage-deflate unless asked, like the Python
  // shard (ws would offer it by default).
  class Socket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, { perMessageDeflate: args.deflate, handshakeTimeout: TIMEOUT_MS });
    }
  }
  return new Promise((resolve) => {
    let connected = false;
    let settled = false;
    const fail = (why) => {
      if (settled) return;
      settled = true;
      client.dispose().catch(() => {});
      resolve(String(why));
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
          resolve({ dispose: () => client.dispose().catch(() => {}) });
        },
        error: (err) => {
          if (!connected) fail(err && err.message ? err.message : err);
        },
        closed: (event) => {
          if (!connected) return fail(`closed before ack: ${closeText(event)}`);
          sub.ended = true;
          if (sub.close === null) sub.close = closeText(event);
          // A server close with 1000 would make the library reconnect while a
          // subscription is active; disposing first stops that (it sets `disposed`).
          client.dispose().catch(() => {});
        },
      },
    });
    client.subscribe(
      { query, variables: { name: args.channel } },
      {
        next: onNext,
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
          if (connected && !sub.ended) {
            sub.errors += 1;
            if (sub.close === null) sub.close = "complete";
          }
        },
      },
    );
  });
}
