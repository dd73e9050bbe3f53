// pusher-js 8 (the official Pusher Channels client, its Node build) against a
// running server's Pusher endpoint, driven line by line.
//
// Usage: node pusher_client.mjs <config json>
//   config: {"port": 8000, "key": "app key", "token": "JWT or null",
//            "bind": ["announcement", "client-typing", ...], "authParams": {...}}
//
// Connects with the options a browser app would use, pointed at 127.0.0.1:<port>
// over plain ws, with `channelAuthorization` on /pusher/auth and
// `userAuthentication` on /pusher/user-auth (the token as `Authorization: Bearer`).
// Then reads commands, one JSON object per stdin line:
//   {"op": "subscribe", "channel": name}       {"op": "unsubscribe", "channel": name}
//   {"op": "trigger", "channel": name, "event": "client-x", "data": {...}}
//   {"op": "signin"}                           {"op": "members", "channel": name}
//   {"op": "disconnect"}                       {"op": "exit"}
// and prints one JSON object per line for everything that happens:
//   {"state": "connected", "socket_id": "1.2"}          connection state changes
//   {"connection_error": {...}}                         pusher:error and close codes
//   {"global": event, "data": ...}                      events bound globally
//   {"channel": name, "event": event, "data": ..., "user_id": ...}
//      channel events: pusher:subscription_succeeded (data: the members for
//      presence channels), pusher:subscription_error, pusher:member_added/removed,
//      pusher:cache_miss and every event named in "bind" (with its user_id)
//   {"members": {...}, "channel": name}                 reply to "members"
//   {"triggered": bool, "channel": name}                reply to "trigger"
//
// The process ends on "exit", when stdin closes, or after TIMEOUT_MS (printing
// {"timeout": true}), so a test never hangs on it.
import Pusher from 'pusher-js';
import readline from 'node:readline';

const TIMEOUT_MS = 60_000;
const config = JSON.parse(process.argv[2] ?? '{}');
if (!config.port || !config.key) {
  console.error('usage: node pusher_client.mjs \'{"port": 8000, "key": "...", "token": "..."}\'');
  process.exit(2);
}
const bound = new Set(config.bind ?? []);
const base = `http://127.0.0.1:${config.port}`;
const headers = config.token ? { Authorization: `Bearer ${config.token}` } : {};
// With several apps configured, the auth endpoints need to know which one: app_key.
const params = config.authParams ?? {};

function out(obj) {
  console.log(JSON.stringify(obj));
}

const pusher = new Pusher(config.key, {
  cluster: 'unused', // required by the constructor; wsHost decides where it connects
  wsHost: '127.0.0.1',
  wsPort: config.port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  activityTimeout: config.activityTimeout ?? 120_000,
  channelAuthorization: { endpoint: `${base}/pusher/auth`, transport: 'ajax', headers, params },
  userAuthentication: { endpoint: `${base}/pusher/user-auth`, transport: 'ajax', headers, params },
});

function members(channel) {
  const m = channel.members;
  const all = {};
  m.each((member) => {
    all[member.id] = member.info;
  });
  return { count: m.count, me: m.me ? { id: m.me.id, info: m.me.info } : null, members: all };
}

pusher.connection.bind('state_change', ({ current }) => {
  const line = { state: current };
  if (current === 'connected') line.socket_id = pusher.connection.socket_id;
  out(line);
});
pusher.connection.bind('error', (error) => {
  out({ connection_error: error?.data ?? error?.error ?? String(error) });
});
pusher.bind_global((event, data) => {
  if (!event.startsWith('pusher_internal:')) out({ global: event, data });
});

function subscribe(name) {
  const channel = pusher.subscribe(name);
  channel.bind_global((event, data) => {
    if (bound.has(event)) return; // printed with its metadata below
    if (event === 'pusher:subscription_succeeded' && name.startsWith('presence-')) {
      out({ channel: name, event, data: members(channel) });
    } else {
      out({ channel: name, event, data });
    }
  });
  for (const event of bound) {
    channel.bind(event, (data, metadata) => {
      out({ channel: name, event, data, user_id: metadata?.user_id ?? null });
    });
  }
}

const timer = setTimeout(() => {
  out({ timeout: true });
  pusher.disconnect();
  process.exit(1);
}, TIMEOUT_MS);

function exit() {
  clearTimeout(timer);
  pusher.disconnect();
  // Let the close frame go out before the process ends.
  setTimeout(() => process.exit(0), 100);
}

const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  switch (command.op) {
    case 'subscribe':
      subscribe(command.channel);
      break;
    case 'unsubscribe':
      pusher.unsubscribe(command.channel);
      out({ unsubscribed: command.channel });
      break;
    case 'trigger': {
      const channel = pusher.channel(command.channel);
      const triggered = Boolean(channel?.trigger(command.event, command.data));
      out({ triggered, channel: command.channel });
      break;
    }
    case 'signin':
      pusher.signin();
      break;
    case 'members':
      out({ channel: command.channel, members: members(pusher.channel(command.channel)) });
      break;
    case 'disconnect':
      pusher.disconnect();
      break;
    case 'exit':
      exit();
      break;
    default:
      out({ unknown_command: command.op });
  }
});
input.on('close', exit);
