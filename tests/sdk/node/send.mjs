// Sends one shopper's calls through a real SDK to the collector, then prints what it
// sent (JSON on stdout) so a test can look for every call on the touchpoints topic.
//   node send.mjs <segment|rudderstack> <collector URL> <write key> <user id> <count>
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const [sdk, host, writeKey, userId, countArg] = process.argv.slice(2);
const count = Number(countArg || '5');
const errors = [];

function client() {
  if (sdk === 'segment') {
    const { Analytics } = require('@segment/analytics-node');
    const analytics = new Analytics({ writeKey, host, flushAt: count + 1, maxRetries: 0 });
    analytics.on('error', (err) => errors.push(String(err && err.reason ? err.reason : err)));
    return {
      call: (kind, message) => analytics[kind](message),
      close: () => analytics.closeAndFlush({ timeout: 20000 }),
    };
  }
  const Analytics = require('@rudderstack/rudder-sdk-node');
  const analytics = new Analytics(writeKey, {
    dataPlaneUrl: host,
    flushAt: count + 1,
    retryCount: 0,
    logLevel: 'error',
    errorHandler: (err) => errors.push(String(err)),
  });
  return {
    call: (kind, message) => analytics[kind](message),
    close: () => analytics.flush(),
  };
}

const c = client();
const traits = { email: `${userId}@example.com`, firstName: 'Node', loyaltyId: `L-${userId}` };
// RudderStack's SDKs carry identify traits in context.traits; Segment's in traits.
if (sdk === 'segment') {
  c.call('identify', { userId, traits, context: { timezone: 'Europe/Berlin' } });
} else {
  c.call('identify', { userId, context: { traits, timezone: 'Europe/Berlin' } });
}
for (let i = 0; i < count; i += 1) {
  c.call('track', {
    userId,
    event: 'Product Viewed',
    properties: { sku: `SKU-${i}`, price: 10 + i, name: 'x'.repeat(1000) },
  });
}
c.call('track', {
  userId,
  event: 'Product Added',
  properties: { sku: 'SKU-0', price: 10, quantity: 1 },
});
await c.close();
process.stdout.write(JSON.stringify({ sdk, userId, calls: count + 2, errors }) + '\n');
