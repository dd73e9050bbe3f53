// graphql-http's own GraphQL-over-HTTP audit suite against a running server.
//
// Usage: node http_audit.mjs <url of the GraphQL endpoint>
// Prints one JSON line: [{id, name, status, reason}], status "ok", "notice",
// "warn" or "error". An audit that throws (not an assertion: the server is down,
// say) exits non-zero with the error on stderr.
import { serverAudits } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node http_audit.mjs <graphql url>');
  process.exit(2);
}

const results = [];
for (const audit of serverAudits({ url, fetchFn: fetch })) {
  const result = await audit.fn();
  let reason = result.reason ?? null;
  if (result.status !== 'ok' && result.response) {
    // What the server answered, so a failing audit says more than its name.
    const type = result.response.headers.get('content-type');
    let body = '';
    try {
      body = (await result.response.text()).slice(0, 300);
    } catch {
      // the audit already read the body
    }
    reason = `${reason} (got ${result.response.status}, ${type}: ${body})`;
  }
  results.push({ id: result.id, name: result.name, status: result.status, reason });
}
console.log(JSON.stringify(results));
