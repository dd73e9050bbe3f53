// Subscribe to one channel with a third-party HTTP streaming client and print each
// event as one JSON line as it arrives, then a summary line.
//   node sse_client.mjs <client> <url> <token> <channel> <since-json|-> <count>
// <client>: sse-distinct | sse-single (graphql-sse) | apollo-multipart (Apollo
// Client's HttpLink). Exits after <count> events, an error or complete, or 30 s.
import { createClient } from 'graphql-sse';
import { ApolloClient, HttpLink, InMemoryCache, gql } from '@apollo/client';

const [client, url, token, channel, sinceArg, countArg] = process.argv.slice(2);
const since = sinceArg === '-' ? null : JSON.parse(sinceArg);
const count = Number(countArg);
const query = `subscription ($name: String!, $since: PositionInput) {
  channel(name: $name, since: $since) { offset epoch kind announcement { title } }
}`;
const events = [];
const print = (line) => process.stdout.write(JSON.stringify(line) + '\n');
const deadline = setTimeout(() => finish('timeout'), 30000);

let stop = () => {};
function finish(how, error) {
  clearTimeout(deadline);
  stop();
  print({ how, error: error ?? null, events });
  process.exit(0);
}
function onNext(result) {
  events.push(result);
  print({ event: result });
  if (result.errors) finish('error-result');
  else if (events.length >= count) finish('count');
}
const variables = { name: channel, since };

if (client.startsWith('sse-')) {
  const sse = createClient({
    url,
    singleConnection: client === 'sse-single',
    headers: { authorization: `Bearer ${token}` },
    retryAttempts: 0,
    on: { connected: () => print({ connected: true }) },
  });
  stop = sse.subscribe(
    { query, variables },
    { next: onNext, error: (e) => finish('error', String(e?.message ?? e)), complete: () => finish('complete') },
  );
} else if (client === 'apollo-multipart') {
  const apollo = new ApolloClient({
    link: new HttpLink({ uri: url, headers: { authorization: `Bearer ${token}` } }),
    cache: new InMemoryCache(),
  });
  const sub = apollo.subscribe({ query: gql(query), variables }).subscribe({
    next: onNext,
    error: (e) => finish('error', String(e?.message ?? e)),
    complete: () => finish('complete'),
  });
  print({ connected: true });
  stop = () => sub.unsubscribe();
} else {
  print({ how: 'bad-client', error: client, events });
  process.exit(2);
}
