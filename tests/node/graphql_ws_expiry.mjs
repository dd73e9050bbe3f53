// graphql-ws 6 (the graphql-transport-ws protocol, `ws` as its WebSocket) with
// retries on, subscribed with a token that is about to expire or has expired:
// counts every connection attempt, acknowledgement and close, so the caller can
// tell one clear refusal from an accept-then-close retry loop.
//
// Usage: node graphql_ws_expiry.mjs <ws url> <token> <channel> <retryAttempts>
//
// The token is sent the same way on every attempt (a static connectionParams, the
// common case). retryWait is short (RETRY_WAIT_MS), so a loop would show many
// cycles in a few seconds. The run ends when the subscription ends (graphql-ws gave
// up, or the server completed it) plus QUIET_MS to catch any further attempt, or
// after TIMEOUT_MS; the last line is one JSON report with times as Unix seconds.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const [url, token, channel, retries] = process.argv.slice(2);
if (!url || !token || !channel || retries === undefined) {
  console.error('usage: node graphql_ws_expiry.mjs <ws url> <token> <channel> <retryAttempts>');
  process.exit(2);
}
const RETRY_WAIT_MS = 100;
const QUIET_MS = 1500;
const TIMEOUT_MS = 30_000;
const SUBSCRIBE = 'subscription($name: String!) { channel(name: $name) { offset kind } }';

const now = () => Date.now() / 1000;
const report = { startedAt: now(), connecting: 0, connected: 0, closes: [], events: 0 };

function finish() {
  report.endedAt = now();
  console.log(JSON.stringify(report));
  process.exit(0);
}
setTimeout(() => {
  report.timedOut = true;
  finish();
}, TIMEOUT_MS).unref();

const client = createClient({
  url,
  webSocketImpl: WebSocket,
  connectionParams: { authorization: `Bearer ${token}` },
  retryAttempts: Number(retries),
  retryWait: () => new Promise((resolve) => setTimeout(resolve, RETRY_WAIT_MS)),
  on: {
    connecting: () => {
      report.connecting += 1;
    },
    connected: () => {
      report.connected += 1;
    },
    closed: (event) => {
      report.closes.push({ code: event?.code, reason: event?.reason, at: now() });
    },
  },
});

function ended(outcome) {
  report.outcome = outcome;
  setTimeout(finish, QUIET_MS);
}

client.subscribe(
  { query: SUBSCRIBE, variables: { name: channel } },
  {
    next: () => {
      report.events += 1;
    },
    error: (error) => {
      // A close event (graphql-ws gave up on it) or a list of GraphQL errors.
      ended({
        error: Array.isArray(error)
          ? error.map((e) => e.message)
          : { code: error?.code, reason: error?.reason, message: error?.message },
      });
    },
    complete: () => ended({ complete: true }),
  },
);
