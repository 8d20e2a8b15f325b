// Web Push in Chromium: `herald.push` (herald.js) and the service worker `/herald-sw.js`.
//
// Chromium cannot reach a real push service here (`pushManager.subscribe` needs Google's and
// never resolves offline), so this test plays the push service itself. What is real and what is
// not:
//
// REAL: `herald serve` (dev mode: its own VAPID key, loopback endpoints accepted); Chromium's
// notification permission (granted with `context.grantPermissions`, denied with CDP
// `Browser.setPermission`) and `Notification.requestPermission()`; the service worker's
// registration and activation from `/herald-sw.js`; the request herald.js posts (body and
// token) and the server keeping it (read back with the publisher API); a publish with
// `"push": "always"` making Herald POST to the push service (a Node HTTP server of this test on
// 127.0.0.1), whose VAPID `Authorization` this test verifies (ES256 against the server's public
// key, `aud`, `exp`) and whose aes128gcm body it decrypts with the browser's private key (Node
// crypto: ECDH, HKDF, AES-128-GCM); that plaintext handed to the real service worker as a push
// (CDP `ServiceWorker.deliverPushMessage`), which shows a real notification (read back with
// `registration.getNotifications()`); the click logic running in the worker against its real
// `clients.matchAll`, real `postMessage` to the page and real `notification.close()`;
// `herald.push.unsubscribe()` and the server forgetting the subscription.
//
// STUBBED: the answer of a server without a VAPID key (404 `push_not_configured`, through
// `page.route`: a dev-mode server always has a key). `PushManager.prototype.subscribe` and
// `getSubscription` (page level,
// `addInitScript`): they answer a PushSubscription-shaped object whose endpoint is the test's
// push service and whose keys are a P-256 pair and auth secret this test generated (kept in
// localStorage, as the browser keeps a real one). In the worker, `WindowClient.focus()` and
// `clients.openWindow()` are replaced for the click by recorders: Chromium allows them only
// while it dispatches a real `notificationclick`, and no automation API can click a
// notification (CDP has none), so the test asserts which window the worker would focus or
// which URL it would open, not that the browser did it.
//
// NOT COVERED: Chromium's own push service client (FCM) and the browser decrypting a push: the
// test decrypts it and delivers the plaintext.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createDecipheriv, createECDH, createPublicKey, hkdfSync, randomBytes, verify } from 'node:crypto';

import { HeraldServer, WAIT_MS, launchBrowser, newContext, openTab, until } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** The key the stub keeps its subscription under in localStorage. */
const STUB_STORE = 'herald-test push subscription';

/**
 * A push service on 127.0.0.1: records every request (method, path, headers, body) and answers
 * 201, as a push service accepting a message does.
 */
async function startPushService() {
  const received = [];
  const server = createServer((request, response) => {
    const chunks = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      received.push({ method: request.method, path: request.url, headers: request.headers, body: Buffer.concat(chunks) });
      response.writeHead(201).end();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    received,
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

/** The browser's side of a subscription: a P-256 key pair and a 16-byte auth secret. */
function browserKeys() {
  const ecdh = createECDH('prime256v1');
  ecdh.generateKeys();
  const auth = randomBytes(16);
  return { ecdh, auth, json: { p256dh: ecdh.getPublicKey().toString('base64url'), auth: auth.toString('base64url') } };
}

/** Decrypts an aes128gcm push body (RFC 8188, keys of RFC 8291) with the browser's keys. */
function decryptPush(body, keys) {
  const salt = body.subarray(0, 16);
  const recordSize = body.readUInt32BE(16);
  const keyIdLength = body[20];
  assert.equal(keyIdLength, 65, 'the key id is the server\'s ephemeral public key');
  const serverKey = body.subarray(21, 21 + keyIdLength);
  const ciphertext = body.subarray(21 + keyIdLength);
  assert.ok(ciphertext.length <= recordSize, 'one record');
  const shared = keys.ecdh.computeSecret(serverKey);
  const keyInfo = Buffer.concat([Buffer.from('WebPush: info\0'), keys.ecdh.getPublicKey(), serverKey]);
  const ikm = Buffer.from(hkdfSync('sha256', shared, keys.auth, keyInfo, 32));
  const contentKey = Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: aes128gcm\0'), 16));
  const nonce = Buffer.from(hkdfSync('sha256', ikm, salt, Buffer.from('Content-Encoding: nonce\0'), 12));
  const decipher = createDecipheriv('aes-128-gcm', contentKey, nonce);
  decipher.setAuthTag(ciphertext.subarray(-16));
  const padded = Buffer.concat([decipher.update(ciphertext.subarray(0, -16)), decipher.final()]);
  let end = padded.length - 1;
  while (end >= 0 && padded[end] === 0) end -= 1;
  assert.equal(padded[end], 2, 'the last record\'s delimiter');
  return padded.subarray(0, end).toString('utf8');
}

/** Checks a push's `Authorization: vapid t=<JWT>, k=<key>` (RFC 8292) for `endpoint`. */
function checkVapid(header, publicKey, endpoint) {
  const parsed = /^vapid t=([A-Za-z0-9_.-]+),\s*k=([A-Za-z0-9_-]+)$/.exec(header ?? '');
  assert.ok(parsed, `a VAPID authorization: ${header}`);
  const [, jwt, key] = parsed;
  assert.equal(key, publicKey, 'k is the server\'s VAPID public key');
  const [head, claims, signature] = jwt.split('.');
  assert.deepEqual(JSON.parse(Buffer.from(head, 'base64url')), { typ: 'JWT', alg: 'ES256' });
  const point = Buffer.from(key, 'base64url');
  const verifier = createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: point.subarray(1, 33).toString('base64url'), y: point.subarray(33).toString('base64url') },
    format: 'jwk',
  });
  assert.ok(
    verify('sha256', Buffer.from(`${head}.${claims}`), { key: verifier, dsaEncoding: 'ieee-p1363' }, Buffer.from(signature, 'base64url')),
    'the JWT is signed with the VAPID key',
  );
  const { aud, exp, sub } = JSON.parse(Buffer.from(claims, 'base64url'));
  assert.equal(aud, new URL(endpoint).origin);
  const now = Date.now() / 1000;
  assert.ok(exp > now && exp <= now + 24 * 3600, `exp within 24 h: ${exp - now} s`);
  assert.match(sub, /^(mailto:|https:)/);
}

/**
 * Page-level stub of the push service client (runs in every page of the context, before its
 * scripts): `subscribe` records its options and answers a subscription at `endpoint` with the
 * test's keys; `getSubscription` answers the one kept (localStorage, as a browser keeps it).
 */
function stubPushManager({ endpoint, keys, store }) {
  const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const bytesOf = (text) => Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
  window.pushStub = { subscribed: [], unsubscribed: [] };
  const subscriptionOf = (kept) => ({
    endpoint: kept.endpoint,
    expirationTime: null,
    options: { userVisibleOnly: true, applicationServerKey: bytesOf(kept.key).buffer },
    getKey: (name) => bytesOf(keys[name]).buffer,
    toJSON: () => ({ endpoint: kept.endpoint, expirationTime: null, keys: { ...keys } }),
    unsubscribe: async () => {
      localStorage.removeItem(store);
      window.pushStub.unsubscribed.push(kept.endpoint);
      return true;
    },
  });
  PushManager.prototype.getSubscription = async function getSubscription() {
    const kept = JSON.parse(localStorage.getItem(store) ?? 'null');
    return kept && subscriptionOf(kept);
  };
  PushManager.prototype.subscribe = async function subscribe(options) {
    // A real pushManager refuses to subscribe without an active worker: note whether it was.
    const registration = await navigator.serviceWorker.getRegistration();
    window.pushStub.subscribed.push({
      userVisibleOnly: options.userVisibleOnly,
      applicationServerKey: base64url(options.applicationServerKey),
      worker: registration?.active?.state ?? null,
    });
    const kept = { endpoint, key: base64url(options.applicationServerKey) };
    localStorage.setItem(store, JSON.stringify(kept));
    return subscriptionOf(kept);
  };
}

/** The user's subscriptions, as the publisher API lists them. */
async function listed(server, user) {
  const response = await fetch(`${server.url}/v1/users/${user}/push-subscriptions`, {
    headers: { authorization: `Bearer ${server.apiKey}` },
  });
  assert.equal(response.status, 200);
  return (await response.json()).subscriptions;
}

/** The notifications the page's service worker registration shows now. */
function shownNotifications(page) {
  return page.evaluate(async () => {
    const registration = await navigator.serviceWorker.getRegistration();
    const shown = await registration.getNotifications();
    return shown.map(({ title, body, tag, icon, data }) => ({ title, body, tag, icon, data }));
  });
}

/** Waits until the worker shows `count` notifications (tag order); returns them. */
async function waitForShown(page, count) {
  let shown = [];
  await until(async () => {
    shown = await shownNotifications(page);
    return shown.length === count;
  }, () => `${count} notifications shown, have ${JSON.stringify(shown)}`);
  return shown.sort((a, b) => a.tag.localeCompare(b.tag));
}

/** Deliveries of one push through CDP at most, and how long each is given to show. */
const DELIVERY_TRIES = 3;
const DELIVERY_WAIT_MS = 7_000;

/**
 * Delivers `text` to the worker (`deliver`, through CDP) until a notification for which `shows`
 * is true is shown, at most DELIVERY_TRIES times. Headless Chromium now and then loses a push
 * delivered through CDP (in CI at 0a0dcad, and one run in five of this file alone on
 * 2026-12-05: nothing shown in 20 s, a different push each time), after Herald has done its
 * part (the push service got the push, and it decrypted). A second copy replaces the first
 * (same tag) rather than adding one, so what is shown stays what one delivery shows; a push the
 * worker never shows still fails the test.
 */
async function deliverUntilShown(deliver, page, text, shows, what) {
  for (let attempt = 1; ; attempt++) {
    await deliver(text);
    try {
      await until(async () => (await shownNotifications(page)).some(shows), () => what, DELIVERY_WAIT_MS);
      return;
    } catch (error) {
      if (attempt === DELIVERY_TRIES) throw error;
    }
  }
}

/**
 * Calls the worker's `heraldNotificationClick` with an event for a notification with `data`
 * (or for the real one shown with the tag `shown`), with `focus` and `openWindow` recorded (see the header):
 * what it focused, what it opened, whether it closed the notification.
 */
function click(worker, data, { shown = null } = {}) {
  return worker.evaluate(async ({ data, shown }) => {
    const calls = { focused: [], opened: [], closed: false };
    const { focus } = WindowClient.prototype;
    const { openWindow } = Clients.prototype;
    WindowClient.prototype.focus = async function recordFocus() { calls.focused.push(this.url); return this; };
    Clients.prototype.openWindow = async function recordOpen(url) { calls.opened.push(url); return null; };
    try {
      let notification = { data, close() { calls.closed = true; } };
      if (shown !== null) {
        [notification] = await self.registration.getNotifications({ tag: shown });
        const close = notification.close.bind(notification);
        notification.close = () => { calls.closed = true; close(); };
      }
      let extended = null;
      const result = await self.heraldNotificationClick({ notification, waitUntil: (promise) => { extended = promise; } });
      return { ...calls, extended: extended !== null, result: result?.url ?? null };
    } finally {
      WindowClient.prototype.focus = focus;
      Clients.prototype.openWindow = openWindow;
    }
  }, { data, shown });
}

/** Records, in the page, the messages the service worker posts it. */
function recordWorkerMessages(page) {
  return page.evaluate(() => {
    window.workerMessages = [];
    navigator.serviceWorker.addEventListener('message', (event) => window.workerMessages.push(event.data));
    navigator.serviceWorker.startMessages();
  });
}

test('subscribe, a push from a publish to the notification shown, its click, unsubscribe', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const pushService = await startPushService();
  t.after(() => pushService.close());
  const keys = browserKeys();
  const endpoint = `${pushService.url}/push/alice-laptop`;
  const context = await newContext(browser, server);
  t.after(() => context.close());
  await context.grantPermissions(['notifications'], { origin: server.url });
  await context.addInitScript(stubPushManager, { endpoint, keys: keys.json, store: STUB_STORE });
  const page = await openTab(context, server, { user: 'alice', session: 'laptop' });
  const vapidKey = (await (await fetch(`${server.url}/v1/push/vapid-public-key`)).json()).public_key;

  assert.deepEqual(await page.evaluate(() => herald.push.state()), { supported: true, permission: 'granted', subscribed: false });

  // A server without a VAPID key (answer faked here: a dev-mode server always has one): a clear
  // refusal, and no worker registered.
  await page.route('**/v1/push/vapid-public-key', (route) => route.fulfill({
    status: 404,
    contentType: 'application/json',
    body: JSON.stringify({ error: { code: 'push_not_configured', message: 'Web Push is not configured on this server' } }),
  }));
  const notConfigured = await page.evaluate(() => herald.push.subscribe().catch((e) => ({ name: e.name, status: e.status, code: e.code })));
  assert.deepEqual(notConfigured, { name: 'HeraldError', status: 404, code: 'push_not_configured' });
  assert.equal(await page.evaluate(async () => (await navigator.serviceWorker.getRegistration()) ?? null), null, 'no worker registered');
  await page.unroute('**/v1/push/vapid-public-key');

  // This browser kept a subscription made with an earlier VAPID key, and the server has it: it
  // is dropped on both sides and a new one made with the server's key.
  const stale = { endpoint: `${pushService.url}/push/stale`, key: browserKeys().json.p256dh };
  const token = server.token({ user: 'alice', session: 'laptop' });
  const staleKept = await fetch(`${server.url}/v1/push/subscriptions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ endpoint: stale.endpoint, keys: browserKeys().json }),
  });
  assert.equal(staleKept.status, 201);
  await page.evaluate(({ store, stale }) => localStorage.setItem(store, JSON.stringify(stale)), { store: STUB_STORE, stale });

  const requests = [];
  page.on('request', (request) => { if (new URL(request.url()).pathname.startsWith('/v1/push/')) requests.push(request); });
  const answer = await page.evaluate(() => herald.push.subscribe());
  assert.match(answer.id, /\S/);
  const stub = await page.evaluate(() => window.pushStub);
  assert.deepEqual(stub.unsubscribed, [stale.endpoint], 'the stale subscription was dropped');
  assert.deepEqual(stub.subscribed, [{ userVisibleOnly: true, applicationServerKey: vapidKey, worker: 'activated' }]);
  assert.deepEqual(requests.map((r) => `${r.method()} ${new URL(r.url()).pathname}`), [
    'GET /v1/push/vapid-public-key',
    'DELETE /v1/push/subscriptions',
    'POST /v1/push/subscriptions',
  ]);
  assert.deepEqual(requests[1].postDataJSON(), { endpoint: stale.endpoint });
  const posted = requests[2];
  assert.deepEqual(posted.postDataJSON(), { endpoint, expirationTime: null, keys: keys.json });
  assert.equal(posted.headers()['content-type'], 'application/json');
  assert.match(posted.headers().authorization, /^Bearer [\w-]+\.[\w-]+\.[\w-]+$/);
  assert.deepEqual(await listed(server, 'alice'), [
    { id: answer.id, session: 'laptop', push_service: pushService.url, created_at: answer.created_at },
  ]);
  const registration = await page.evaluate(async () => {
    const registration = await navigator.serviceWorker.getRegistration();
    return { scope: registration.scope, script: registration.active?.scriptURL, state: registration.active?.state };
  });
  assert.deepEqual(registration, { scope: `${server.url}/`, script: `${server.url}/herald-sw.js`, state: 'activated' });
  assert.deepEqual(await page.evaluate(() => herald.push.state()), { supported: true, permission: 'granted', subscribed: true });

  // Subscribing again keeps the browser's subscription (same key) and the server's one.
  const again = await page.evaluate(() => herald.push.subscribe());
  assert.equal(again.id, answer.id);
  assert.equal((await page.evaluate(() => window.pushStub)).subscribed.length, 1);
  assert.equal((await listed(server, 'alice')).length, 1);

  // A publish pushed to every subscription: Herald POSTs it to the push service.
  const data = { title: 'Bob', body: 'Lunch at noon?', icon: '/icon.png', url: '/healthz?from=push' };
  const receipt = await server.publish({ to: { user: 'alice' }, type: 'message.new', data, push: 'always' });
  await until(() => pushService.received.length >= 1, () => 'a push at the push service');
  const [delivery] = pushService.received;
  assert.equal(delivery.method, 'POST');
  assert.equal(delivery.path, '/push/alice-laptop');
  assert.equal(delivery.headers['content-encoding'], 'aes128gcm');
  assert.match(delivery.headers.ttl, /^\d+$/);
  assert.match(delivery.headers.urgency, /^(very-low|low|normal|high)$/);
  if (delivery.headers.topic !== undefined) assert.match(delivery.headers.topic, /^[A-Za-z0-9_-]{1,32}$/);
  checkVapid(delivery.headers.authorization, vapidKey, endpoint);
  const plaintext = decryptPush(delivery.body, keys);
  assert.deepEqual(JSON.parse(plaintext), { type: 'message.new', seq: receipt.notifications[0].seq, data });

  // The plaintext, delivered to the real service worker as the browser would after decrypting.
  const cdp = await context.newCDPSession(page);
  const registrations = new Map();
  cdp.on('ServiceWorker.workerRegistrationUpdated', ({ registrations: updated }) => {
    for (const r of updated) registrations.set(r.scopeURL, r);
  });
  await cdp.send('ServiceWorker.enable');
  await until(() => registrations.get(`${server.url}/`)?.isDeleted === false, () => 'the registration\'s id (CDP)');
  const registrationId = registrations.get(`${server.url}/`).registrationId;
  const deliver = (text) => cdp.send('ServiceWorker.deliverPushMessage', { origin: server.url, registrationId, data: text });
  await deliverUntilShown(deliver, page, plaintext, (n) => n.body === 'Lunch at noon?', 'the first push shown');
  assert.deepEqual(await waitForShown(page, 1), [
    { title: 'Bob', body: 'Lunch at noon?', tag: 'message.new', icon: `${server.url}/icon.png`, data },
  ]);

  // A newer push of the type replaces it (its tag); one without a title shows its type; one the
  // worker cannot read still shows a notification.
  const newer = JSON.stringify({ type: 'message.new', seq: 99, data: { body: 'Or one?', url: '/healthz?from=push' } });
  await deliverUntilShown(deliver, page, newer, (n) => n.body === 'Or one?', 'the newer push shown');
  await deliverUntilShown(deliver, page, 'not json at all', (n) => n.tag === 'herald', 'the unreadable push shown');
  assert.deepEqual(await waitForShown(page, 2), [
    { title: 'New notification', body: '', tag: 'herald', icon: '', data: null },
    { title: 'message.new', body: 'Or one?', tag: 'message.new', icon: '', data: { body: 'Or one?', url: '/healthz?from=push' } },
  ]);

  // Clicks. The worker, as playwright sees it.
  const worker = context.serviceWorkers().find((w) => w.url() === `${server.url}/herald-sw.js`)
    ?? await context.waitForEvent('serviceworker', { timeout: WAIT_MS });
  const clicked = { body: 'Or one?', url: '/healthz?from=push' };
  // A tab at the notification's URL is preferred to the other tab of the app; it is told what
  // was clicked; the notification is closed.
  const there = await context.newPage();
  await there.goto(`${server.url}/healthz?from=push`);
  await Promise.all([recordWorkerMessages(page), recordWorkerMessages(there)]);
  const first = await click(worker, null, { shown: 'message.new' });
  assert.deepEqual(first, {
    focused: [`${server.url}/healthz?from=push`], opened: [], closed: true, extended: true, result: `${server.url}/healthz?from=push`,
  });
  await there.waitForFunction(() => window.workerMessages.length === 1, null, { timeout: WAIT_MS });
  assert.deepEqual(await there.evaluate(() => window.workerMessages), [{ herald: 'notificationclick', data: clicked }]);
  assert.deepEqual(await page.evaluate(() => window.workerMessages), []);
  assert.deepEqual((await waitForShown(page, 1)).map((n) => n.tag), ['herald'], 'the clicked one was closed');
  // Without a tab at the URL, another tab of the origin.
  await there.close();
  const second = await click(worker, clicked);
  assert.deepEqual(second.focused, [`${server.url}/healthz`]);
  assert.deepEqual(second.opened, []);
  await page.waitForFunction(() => window.workerMessages.length === 1, null, { timeout: WAIT_MS });
  // With no tab of the origin: the URL opens (a relative one, resolved on the origin); a URL of
  // another origin never does (the origin's root instead), nor does a script.
  await page.goto('about:blank');
  const opened = async (url) => {
    const result = await click(worker, { url });
    assert.deepEqual(result.focused, [], url);
    return result.opened;
  };
  assert.deepEqual(await opened('/healthz?from=push'), [`${server.url}/healthz?from=push`]);
  assert.deepEqual(await opened(`${server.url}/v1/cluster`), [`${server.url}/v1/cluster`]);
  for (const foreign of ['https://evil.example/login', '//evil.example/login', 'javascript:alert(1)', 'http://[::1', ` ${pushService.url}/x`]) {
    assert.deepEqual(await opened(foreign), [`${server.url}/`], foreign);
  }
  assert.deepEqual((await click(worker, null)).opened, [`${server.url}/`], 'no URL: the root');

  // Unsubscribe: the server forgets it, then the browser drops it.
  await page.goto(`${server.url}/healthz`);
  await page.evaluate(async () => {
    const { Herald } = await import('/herald.js');
    window.herald = new Herald({ token: () => window.heraldTestToken({ user: 'alice', session: 'laptop' }) });
  });
  assert.equal(await page.evaluate(() => herald.push.unsubscribe()), true);
  assert.deepEqual(await listed(server, 'alice'), []);
  assert.deepEqual(await page.evaluate(() => window.pushStub.unsubscribed), [endpoint]);
  assert.deepEqual(await page.evaluate(() => herald.push.state()), { supported: true, permission: 'granted', subscribed: false });
  assert.equal(await page.evaluate(() => herald.push.unsubscribe()), false, 'nothing left to drop');
});

test('denied permission, or no Web Push: a clear refusal, nothing registered or posted', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const keys = browserKeys();
  const context = await newContext(browser, server);
  t.after(() => context.close());
  await context.addInitScript(stubPushManager, { endpoint: 'http://127.0.0.1:9/push/never', keys: keys.json, store: STUB_STORE });
  const page = await openTab(context, server, { user: 'alice', session: 'laptop' });
  const cdp = await context.newCDPSession(page);
  await cdp.send('Browser.setPermission', { permission: { name: 'notifications' }, setting: 'denied', origin: server.url });
  const requests = [];
  page.on('request', (request) => { if (new URL(request.url()).pathname.startsWith('/v1/push/')) requests.push(request.url()); });

  const refusal = () => page.evaluate(async () => {
    try {
      await herald.push.subscribe();
      return 'subscribed';
    } catch (error) {
      return { name: error.name, status: error.status, code: error.code, message: error.message };
    }
  });
  const denied = await refusal();
  assert.deepEqual({ ...denied, message: undefined }, { name: 'HeraldError', status: 0, code: 'push_permission_denied', message: undefined });
  assert.match(denied.message, /denied/);
  assert.deepEqual(requests, [], 'nothing sent to the server');
  assert.equal(await page.evaluate(async () => (await navigator.serviceWorker.getRegistration()) ?? null), null, 'no worker registered');
  assert.deepEqual(await page.evaluate(() => window.pushStub.subscribed), []);
  assert.deepEqual(await listed(server, 'alice'), []);
  assert.deepEqual(await page.evaluate(() => herald.push.state()), { supported: true, permission: 'denied', subscribed: false });

  // A browser without PushManager (or not on a secure origin).
  await page.evaluate(() => { delete window.PushManager; });
  const unsupported = await refusal();
  assert.deepEqual([unsupported.name, unsupported.status, unsupported.code], ['HeraldError', 0, 'push_unsupported']);
  assert.deepEqual(await page.evaluate(() => herald.push.state()), { supported: false, permission: 'denied', subscribed: false });
  assert.equal(await page.evaluate(() => herald.push.unsubscribe()), false);
  assert.deepEqual(requests, []);
});
