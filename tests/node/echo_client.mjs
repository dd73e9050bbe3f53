// Laravel Echo 2 with its pusher connector (pusher-js 8 passed in as `Pusher`, the
// way an app without a global window.Pusher does it) against a running server,
// driven line by line.
//
// Usage: node echo_client.mjs <config json>
//   config: {"port": 8000, "key": "app key", "token": "JWT"}
//
// Echo is configured the way a Laravel app configures it (broadcaster 'pusher',
// authEndpoint, bearerToken), pointed at 127.0.0.1:<port> over plain ws. Commands,
// one JSON object per stdin line (names without the private-/presence- prefix, as
// Echo takes them):
//   {"op": "private", "name": n, "listen": ".announcement"}   private channel + listener
//   {"op": "join", "name": n, "whisper": "typing"}   presence: here/joining/leaving,
//                                                    and listenForWhisper(whisper)
//   {"op": "whisper", "name": n, "event": "typing", "data": {...}}
//   {"op": "leave", "name": n}                       {"op": "exit"}
// Lines printed: {"connected": socket_id}, {"name": n, "kind": "here"|"joining"|
// "leaving"|"event"|"whisper"|"error"|"subscribed", "data": ...}.
// Ends on "exit", when stdin closes, or after TIMEOUT_MS ({"timeout": true}).
import Echo from 'laravel-echo';
import Pusher from 'pusher-js';
import readline from 'node:readline';

const TIMEOUT_MS = 60_000;
const config = JSON.parse(process.argv[2] ?? '{}');
if (!config.port || !config.key) {
  console.error('usage: node echo_client.mjs \'{"port": 8000, "key": "...", "token": "..."}\'');
  process.exit(2);
}

function out(obj) {
  console.log(JSON.stringify(obj));
}

const echo = new Echo({
  broadcaster: 'pusher',
  Pusher,
  key: config.key,
  cluster: 'unused',
  wsHost: '127.0.0.1',
  wsPort: config.port,
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  authEndpoint: `http://127.0.0.1:${config.port}/pusher/auth`,
  bearerToken: config.token,
});

echo.connector.pusher.connection.bind('connected', () => out({ connected: echo.socketId() }));

const timer = setTimeout(() => {
  out({ timeout: true });
  echo.disconnect();
  process.exit(1);
}, TIMEOUT_MS);

function exit() {
  clearTimeout(timer);
  echo.disconnect();
  setTimeout(() => process.exit(0), 100);
}

const input = readline.createInterface({ input: process.stdin });
input.on('line', (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  const name = command.name;
  switch (command.op) {
    case 'private':
      echo
        .private(name)
        .subscribed(() => out({ name, kind: 'subscribed' }))
        .error((error) => out({ name, kind: 'error', data: error }))
        .listen(command.listen, (data) => out({ name, kind: 'event', data }));
      break;
    case 'join':
      echo
        .join(name)
        .here((users) => out({ name, kind: 'here', data: users }))
        .joining((user) => out({ name, kind: 'joining', data: user }))
        .leaving((user) => out({ name, kind: 'leaving', data: user }))
        .error((error) => out({ name, kind: 'error', data: error }))
        .listenForWhisper(command.whisper ?? 'typing', (data) =>
          out({ name, kind: 'whisper', data }),
        );
      break;
    case 'whisper':
      echo.join(name).whisper(command.event, command.data);
      out({ name, kind: 'whispered' });
      break;
    case 'leave':
      echo.leave(name);
      out({ name, kind: 'left' });
      break;
    case 'exit':
      exit();
      break;
    default:
      out({ unknown_command: command.op });
  }
});
input.on('close', exit);
