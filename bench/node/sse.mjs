// The SSE side of the shard (shard.mjs): graphql-sse's client in distinct
// connections mode, one POST /graphql (`Accept: text/event-stream`) per subscriber.
//
// Why the library and not a hand-written reader: it is the graphql-sse client apps
// use (tests/node drives the same version against the server), so its per-event
// cost (fetch's web stream, its parser, an async generator per operation) is what
// a Node consumer really pays; at the rates this benchmark reaches over SSE it is
// a small share of the client core (watch *client CPU %*). A reader on node:http
// would be cheaper still, but would measure a client nobody ships.
//
// One createClient() for the shard: in distinct connections mode it holds no
// connection of its own, each subscribe() is its own fetch, and the function it
// returns aborts that one stream. Node's fetch (undici) keeps no cap on connections
// per origin by default (its Pool's `connections` is unlimited), unlike browsers'
// six per HTTP/1.1 origin or httpx's 100, so every subscriber gets its own socket;
// its body timeout (300 s between chunks) is far above the server's 12 s heartbeat.
// No retries: a silent reconnect would hide a server-side end, which the benchmark
// must report.

import { createClient } from "graphql-sse";

const TIMEOUT_MS = 30_000; // response headers, like the WebSocket open + ack

let client = null;

function errText(err) {
  if (Array.isArray(err)) return JSON.stringify(err); // GraphQL errors
  return err && err.message ? err.message : String(err);
}

// Open one stream. Resolves, once the server answered 200 with the event stream,
// with {dispose}, or with a string saying why it failed. From then on it records
// the stream's end on `sub`: close (a reason, set once), errors, ended.
export function open(args, query, sub, onNext) {
  client ??= createClient({
    url: args.url,
    headers: { authorization: `Bearer ${args.token}` },
    retryAttempts: 0,
  });
  return new Promise((resolve) => {
    let connected = false;
    let settled = false;
    let closing = false; // we ended it: its `complete` is not the server's
    const fail = (why) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      closing = true;
      stop();
      resolve(String(why));
    };
    const timer = setTimeout(() => fail(`no response within ${TIMEOUT_MS} ms`), TIMEOUT_MS);
    const stop = client.subscribe(
      { query, variables: { name: args.channel } },
      {
        next: onNext,
        error: (err) => {
          // A refused request (not 200), a parse error, or the connection ending
          // without `complete` (graphql-sse reports that as a network error).
          if (!connected) return fail(errText(err));
          sub.ended = true;
          sub.errors += 1;
          if (sub.close === null) sub.close = `error ${errText(err).slice(0, 120)}`;
        },
        complete: () => {
          // The server's `complete` event, or the end of our own abort.
          if (!connected) return fail("complete before the stream opened");
          sub.ended = true;
          if (!closing) {
            sub.errors += 1;
            if (sub.close === null) sub.close = "complete";
          }
        },
      },
      {
        connected: () => {
          connected = settled = true;
          clearTimeout(timer);
          resolve({
            dispose: () => {
              closing = true;
              stop();
            },
          });
        },
      },
    );
  });
}
