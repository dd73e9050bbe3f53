// subscriptions-transport-ws 0.11 (the legacy `graphql-ws` protocol, `ws` as its
// WebSocket) against a running server: every operation goes over the socket.
//
// Usage: node stws_client.mjs <ws url> <token> <channel> <events>
//
// With <events> > 0, as the token's user: runs `me`, reads the channel's position,
// subscribes from it with `since`, publishes one announcement over the socket
// (a mutation), then prints {"ready": ...} so the caller publishes the rest. Once
// <events> events arrived it waits a little longer, so a duplicate would show,
// and prints one JSON line with everything it received.
//
// With <events> = 0 it only connects and reports how the connection ended (for a
// refused token: the connection_error payload and the close code).
//
// Every run ends within TIMEOUT_MS; on a timeout or an operation error the last
// line still says what was received, with an "error", and the exit code is 1.
import subscriptions from 'subscriptions-transport-ws';
import WebSocket from 'ws';

const { SubscriptionClient } = subscriptions;
const [url, token, channel, wanted] = process.argv.slice(2);
if (!url || !token || !channel || wanted === undefined) {
  console.error('usage: node stws_client.mjs <ws url> <token> <channel> <events>');
  process.exit(2);
}
const TIMEOUT_MS = 30_000;
const QUIET_MS = 300;
const ME = '{ me { id role } }';
const POSITION = 'query($name: String!) { channelPosition(name: $name) { offset epoch } }';
const PUBLISH = `mutation($channel: String!, $title: String!) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "b"}) { id title channel }
}`;
const CHANNEL = `subscription($name: String!, $since: PositionInput) {
  channel(name: $name, since: $since) { offset epoch kind recovered fromMe announcement { id title } }
}`;

const report = { protocol: null, events: [], completed: false };
let client;

function finish(error) {
  if (error) report.error = String(error?.message ?? JSON.stringify(error));
  console.log(JSON.stringify(report));
  client?.close();
  process.exit(error ? 1 : 0);
}
setTimeout(() => finish(`timed out after ${TIMEOUT_MS} ms`), TIMEOUT_MS).unref();

// One result of a query or mutation: the observable's next, then its complete.
function once(query, variables) {
  return new Promise((resolve, reject) => {
    let result;
    client.request({ query, variables }).subscribe({
      next: (value) => {
        result = value;
      },
      error: reject,
      complete: () => resolve(result),
    });
  });
}

function connected() {
  return new Promise((resolve, reject) => {
    client = new SubscriptionClient(
      url,
      {
        connectionParams: { authorization: `Bearer ${token}` },
        reconnect: false,
        connectionCallback: (error) => (error ? reject(error) : resolve()),
      },
      WebSocket,
    );
    const socket = client.client;
    socket.addEventListener('open', () => {
      report.protocol = socket.protocol;
    });
    socket.addEventListener('close', (event) => {
      report.closeCode = event.code;
      report.closeReason = event.reason;
    });
  });
}

if (Number(wanted) === 0) {
  try {
    await connected();
    report.acknowledged = true;
  } catch (error) {
    report.connectionError = error;
  }
  // The server closes after a connection_error; wait for it (the timeout bounds this).
  while (report.connectionError && report.closeCode === undefined) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  finish();
}

try {
  await connected();
  report.me = await once(ME);
  const position = (await once(POSITION, { name: channel })).data.channelPosition;
  report.position = position;
  let quiet;
  client.request({ query: CHANNEL, variables: { name: channel, since: position } }).subscribe({
    next: (value) => {
      if (value.errors) finish(JSON.stringify(value.errors));
      report.events.push(value.data.channel);
      if (report.events.length === Number(wanted)) {
        quiet = setTimeout(finish, QUIET_MS);
      }
    },
    error: (error) => finish(JSON.stringify(error)),
    complete: () => {
      report.completed = true;
      clearTimeout(quiet);
      finish('the subscription completed');
    },
  });
  report.mutation = await once(PUBLISH, { channel, title: 'over subscriptions-transport-ws' });
  console.log(JSON.stringify({ ready: true }));
} catch (error) {
  finish(error);
}
