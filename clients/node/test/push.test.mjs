// Web Push from the publisher, against a real `herald serve --memory` with a VAPID key: a
// publish's push options reach the push (a push service on 127.0.0.1 stands in for the
// browser's) or get the server's refusal as a HeraldError, and a user's subscriptions,
// registered as herald.js registers them (with a subscriber token), are listed and removed.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createECDH } from 'node:crypto';

import { Herald } from '../src/index.js';
import {
  API_KEY, PUSH_ENV, SECRET, VAPID_PRIVATE_KEY, refused, startHerald, startPushService, subscribeBrowser,
} from './server.mjs';

/** An id no subscription has (22 characters, as the server makes them). */
const UNKNOWN_ID = 'q1w2e3r4t5y6u7i8o9p0aA';

let server;
let herald;

before(async () => {
  server = await startHerald({ env: PUSH_ENV });
  herald = new Herald({ url: server.url, apiKey: API_KEY, secret: SECRET });
});

after(async () => {
  await server?.stop();
});

/** Runs `body` with a push service of its own, stopped after. */
async function withPushService(body) {
  const service = await startPushService();
  try {
    await body(service);
  } finally {
    await service.stop();
  }
}

/** The VAPID public key of VAPID_PRIVATE_KEY, worked out here (its P-256 point). */
function vapidPublicKey() {
  const ecdh = createECDH('prime256v1');
  ecdh.setPrivateKey(Buffer.from(VAPID_PRIVATE_KEY, 'base64url'));
  return ecdh.getPublicKey('base64url');
}

test('the VAPID public key: the private key\'s point, no API key needed', async () => {
  assert.deepEqual(await herald.vapidPublicKey(), { public_key: vapidPublicKey() });
  assert.deepEqual(await new Herald({ url: server.url }).vapidPublicKey(), { public_key: vapidPublicKey() });
});

test('push options reach the push (notify and a batch entry); `never` pushes nothing', async () => {
  // Fails if notifyBody drops a push option or sends it under another name (the server refuses
  // unknown fields), or if the push carries other headers than asked.
  await withPushService(async (service) => {
    await subscribeBrowser(server.url, herald.mintToken({ user: 'lena', session: 'phone' }), service.endpoint('lena'));
    const quiet = await herald.notify({ user: 'lena', type: 'order.paid', push: 'never', pushTopic: 'never' });
    assert.deepEqual(quiet.notifications, [{ user: 'lena', seq: 1 }]);
    const shipped = await herald.notify({
      user: 'lena',
      type: 'order.shipped',
      data: { order: 7 },
      push: 'always',
      pushPayload: { title: 'Order 7 shipped' },
      pushTtl: 60,
      pushUrgency: 'high',
      pushTopic: 'orders',
    });
    assert.deepEqual(shipped.notifications, [{ user: 'lena', seq: 2 }]);
    const [push] = await service.waitFor(1);
    assert.equal(push.path, '/push/lena');
    assert.deepEqual([push.headers.ttl, push.headers.urgency, push.headers.topic], ['60', 'high', 'orders']);
    assert.ok(push.headers.authorization.endsWith(`k=${vapidPublicKey()}`), push.headers.authorization);

    const batch = await herald.notifyBatch([
      { user: 'lena', type: 'a', push: 'always', pushUrgency: 'low', pushTopic: 'batch' },
      { user: 'lena', type: 'b', push: 'sometimes' },
    ]);
    assert.equal(batch.failed, 1);
    assert.deepEqual(batch.results[0].notifications, [{ user: 'lena', seq: 3 }]);
    assert.deepEqual([batch.results[1].error.status, batch.results[1].error.code], [400, 'invalid_json']);
    const pushes = await service.waitFor(2);
    assert.deepEqual([pushes[1].headers.urgency, pushes[1].headers.topic], ['low', 'batch']);
    // The `never` publish was pushed to nobody.
    assert.deepEqual(service.received.map((p) => p.headers.topic), ['orders', 'batch']);
  });
});

test('a push option the server refuses is a HeraldError with its status and code', async () => {
  // The values are the server's to check: the client sends them as given. Fails if an option
  // is not sent (the publish would succeed).
  for (const [options, status, code] of [
    [{ push: 'sometimes' }, 400, 'invalid_json'],
    [{ pushUrgency: 'urgent' }, 400, 'invalid_json'],
    [{ pushTtl: -1 }, 400, 'invalid_json'],
    [{ pushTopic: 'not a topic!' }, 400, 'invalid_request'],
    [{ pushPayload: 'x'.repeat(4_000) }, 413, 'push_payload_too_large'],
  ]) {
    await refused(herald.notify({ user: 'mona', type: 't', ...options }), status, code);
  }
  assert.deepEqual((await herald.notifications('mona')).notifications, []);
});

test("a user's subscriptions: listed, removed by id, and what is left gets the pushes", async () => {
  await withPushService(async (service) => {
    assert.deepEqual(await herald.pushSubscriptions('nina'), { user: 'nina', subscriptions: [] });
    await refused(herald.removePushSubscription('nina', UNKNOWN_ID), 404, 'no_such_subscription');

    const laptop = await subscribeBrowser(server.url, herald.mintToken({ user: 'nina', session: 'laptop' }), service.endpoint('l'));
    const phone = await subscribeBrowser(server.url, herald.mintToken({ user: 'nina', session: 'phone' }), service.endpoint('p'));
    const listed = await herald.pushSubscriptions('nina');
    assert.equal(listed.user, 'nina');
    assert.deepEqual(listed.subscriptions.map((s) => [s.id, s.session]), [[laptop.id, 'laptop'], [phone.id, 'phone']]);
    assert.equal(listed.subscriptions[0].push_service, service.url); // the origin, never the endpoint
    assert.equal(listed.subscriptions[0].created_at, laptop.created_at);

    assert.equal(await herald.removePushSubscription('nina', laptop.id), undefined);
    assert.deepEqual((await herald.pushSubscriptions('nina')).subscriptions.map((s) => s.id), [phone.id]);
    await refused(herald.removePushSubscription('nina', laptop.id), 404, 'no_such_subscription');
    await herald.notify({ user: 'nina', push: 'always' });
    const [push] = await service.waitFor(1);
    assert.equal(push.path, '/push/p');
    await herald.removePushSubscription('nina', phone.id);
    assert.deepEqual((await herald.pushSubscriptions('nina')).subscriptions, []);
    assert.throws(() => herald.removePushSubscription('nina', ''), TypeError);
  });
});
