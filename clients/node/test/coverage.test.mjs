// Every route of the publisher API has a client method: each operation of docs/openapi.json
// whose security is the API key is in CALLS (a call of `Herald` that sends it) or in EXCLUDED
// (with the reason). Fails when a route with the API key is added to openapi.json and no client
// method sends it: add the method (to clients/python too), then its row here.
//
// Each row is also called with `fetch` replaced by a recorder, so a row cannot name a method
// that sends another route. No server needed.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { Herald } from '../src/index.js';
import { ROOT } from './server.mjs';

const HTTP_METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'];

/**
 * `METHOD path` (as openapi.json writes the path) → a call that must send it. Routes without
 * the API key that the client wraps (health, the VAPID key) are rows too, so that their paths
 * are checked.
 */
const CALLS = {
  'POST /v1/notify': (h) => h.notify({ user: 'u' }),
  'POST /v1/notify/batch': (h) => h.notifyBatch([{ user: 'u' }]),
  'GET /v1/jobs/{id}': (h) => h.job('j'),
  'GET /v1/users/{user}/presence': (h) => h.presence('u'),
  'GET /v1/users/{user}/notifications': (h) => h.notifications('u'),
  'DELETE /v1/users/{user}/sessions': (h) => h.closeAllSessions('u'),
  'DELETE /v1/users/{user}/sessions/{session}': (h) => h.closeSession('u', 's'),
  'GET /v1/users/{user}/inbox': (h) => h.inbox('u').list(),
  'DELETE /v1/users/{user}/inbox': (h) => h.inbox('u').delete({ allUpTo: 3 }),
  'GET /v1/users/{user}/inbox/counts': (h) => h.inbox('u').counts(),
  'POST /v1/users/{user}/inbox/mark': (h) => h.inbox('u').mark([1]),
  'DELETE /v1/users/{user}/inbox/{seq}': (h) => h.inbox('u').delete(1),
  'POST /v1/topics/listen': (h) => h.listen({ topics: 't', user: 'u' }),
  'POST /v1/topics/unlisten': (h) => h.unlisten({ topics: 't', user: 'u' }),
  'GET /v1/topics/{topic}': (h) => h.topic('t'),
  'GET /v1/users/{user}/push-subscriptions': (h) => h.pushSubscriptions('u'),
  'DELETE /v1/users/{user}/push-subscriptions/{id}': (h) => h.removePushSubscription('u', 'i'),
  'GET /v1/cluster': (h) => h.cluster(),
  'GET /v1/push/vapid-public-key': (h) => h.vapidPublicKey(),
  'GET /healthz': (h) => h.health(),
};

/** API-key operations the client deliberately leaves out, each with the reason. Keep it short:
 * a publisher route belongs in the client. */
const EXCLUDED = {};

function loadSpec() {
  return JSON.parse(readFileSync(join(ROOT, 'docs', 'openapi.json'), 'utf8'));
}

/** `METHOD path` → the operation, for every operation of the description. */
function operations(spec) {
  const found = new Map();
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, operation] of Object.entries(item)) {
      if (HTTP_METHODS.includes(method)) found.set(`${method.toUpperCase()} ${path}`, operation);
    }
  }
  return found;
}

/** The operations whose security (their own, else the document's) names the `apiKey` scheme. */
function apiKeyOperations(spec) {
  return [...operations(spec)]
    .filter(([, operation]) => (operation.security ?? spec.security ?? []).some((requirement) => 'apiKey' in requirement))
    .map(([key]) => key);
}

function unwrapped(spec) {
  return apiKeyOperations(spec).filter((key) => !(key in CALLS) && !(key in EXCLUDED)).sort();
}

test('every API-key route of openapi.json has a client method (or an exclusion with its reason)', () => {
  const spec = loadSpec();
  // A sanity bound (18 when written): fewer would mean the security was read wrongly.
  assert.ok(apiKeyOperations(spec).length >= 10, "openapi.json's API-key operations were not found");
  assert.deepEqual(unwrapped(spec), [], 'routes with the API key in docs/openapi.json that no client method sends: '
    + 'add the method to Herald (and to clients/python), then its row to CALLS');
});

test('the check sees a route added to the description', () => {
  // A new API-key operation, or one inheriting the document's API-key security, is reported; a
  // route without the API key is not.
  const spec = structuredClone(loadSpec());
  spec.paths['/v1/users/{user}/new-thing'] = { get: { security: [{ apiKey: [] }] }, post: { security: [] } };
  spec.paths['/v1/inherited'] = { delete: {} };
  spec.security = [{ apiKey: [] }];
  const missing = unwrapped(spec);
  assert.ok(missing.includes('GET /v1/users/{user}/new-thing'), missing);
  assert.ok(missing.includes('DELETE /v1/inherited'), missing);
  assert.ok(!missing.includes('POST /v1/users/{user}/new-thing'), missing);
});

test('the table names routes of the description', () => {
  // A row for a route renamed or removed in openapi.json would hide the new one.
  const described = operations(loadSpec());
  const stale = [...Object.keys(CALLS), ...Object.keys(EXCLUDED)].filter((key) => !described.has(key));
  assert.deepEqual(stale, [], 'rows for operations openapi.json does not have');
  assert.ok(Object.values(EXCLUDED).every((reason) => typeof reason === 'string' && reason.trim()), 'each exclusion says why');
  assert.deepEqual(Object.keys(EXCLUDED).filter((key) => key in CALLS), [], 'an operation is either wrapped or excluded');
});

/** `/v1/users/{user}/inbox` → a regex matching it with any one segment per parameter. */
function template(path) {
  const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const parts = path.split(/(\{[^}]+\})/).map((part) => (part.startsWith('{') ? '[^/]+' : escape(part)));
  return new RegExp(`^${parts.join('')}$`);
}

/** The requests `call` makes, with `fetch` replaced by a recorder answering 200 with a body every
 * method can read. */
async function sentBy(call) {
  const sent = [];
  const original = globalThis.fetch;
  globalThis.fetch = async (url, init) => {
    sent.push([init.method, new URL(url).pathname]);
    const answer = { notifications: [], closed: 0, counts: {}, subscriptions: [], public_key: 'k' };
    return new Response(JSON.stringify(answer), { status: 200, headers: { 'content-type': 'application/json' } });
  };
  try {
    await call(new Herald({ url: 'http://herald.test', apiKey: 'hk' }));
  } finally {
    globalThis.fetch = original;
  }
  return sent;
}

test('each row sends its route', async (t) => {
  for (const [operation, call] of Object.entries(CALLS)) {
    await t.test(operation, async () => {
      const [method, path] = operation.split(' ');
      const sent = await sentBy(call);
      assert.equal(sent.length, 1, JSON.stringify(sent));
      assert.equal(sent[0][0], method, `${operation}: sent ${sent[0].join(' ')}`);
      assert.match(sent[0][1], template(path), `${operation}: sent ${sent[0].join(' ')}`);
    });
  }
});
