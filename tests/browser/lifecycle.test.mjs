// The life of one tab's client: its id across reloads, new tabs and duplicated tabs; the
// long-poll fallback when streams fail; the terminal `closed` reasons.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  HeraldServer, WAIT_MS, launchBrowser, newContext, openTab, recorded, startHerald, until, waitForNotifications, waitForStatus,
} from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const alice = { user: 'alice', session: 'laptop', transport: 'sse' };

test('a reloaded tab keeps its client id; a new or duplicated tab gets its own', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const context = await newContext(browser, server);
  t.after(() => context.close());

  const first = await openTab(context, server, alice);
  const id = (await recorded(first)).client;
  assert.match(id, /^[A-Za-z0-9_-]{20,}$/);
  const stored = await first.evaluate(() => Object.fromEntries(Object.entries(sessionStorage)));
  assert.deepEqual(Object.values(stored), [id], 'the id is kept in sessionStorage');

  await first.reload();
  await startHerald(first, server, alice);
  assert.equal((await recorded(first)).client, id, 'same id after a reload');

  const second = await openTab(context, server, alice);
  const secondId = (await recorded(second)).client;
  assert.notEqual(secondId, id, 'a new tab is a new client');

  // A duplicated tab starts with a copy of the first tab's sessionStorage.
  const duplicate = await context.newPage();
  await duplicate.addInitScript((stored) => {
    for (const [key, value] of Object.entries(stored)) sessionStorage.setItem(key, value);
  }, stored);
  await startHerald(duplicate, server, alice);
  const duplicateId = (await recorded(duplicate)).client;
  assert.ok(![id, secondId].includes(duplicateId), 'the duplicated tab got an id of its own');

  await server.publish({ to: { client: id }, data: 'only the first tab' });
  await server.publish({ to: { user: 'alice' }, data: 'everyone' });
  assert.deepEqual((await waitForNotifications(first, 2)).map((n) => n.data), ['only the first tab', 'everyone']);
  assert.deepEqual((await waitForNotifications(duplicate, 1)).map((n) => n.data), ['everyone']);
  const state = await recorded(first);
  assert.equal(state.status, 'open');
  assert.deepEqual(state.closed, [], 'the first tab was not replaced by its duplicate');
  await server.waitForPresence('alice', 3);
});

test('falls back to long-polling when streams fail while the server is up', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const context = await newContext(browser, server);
  t.after(() => context.close());
  // A proxy that breaks streaming: every SSE request fails; the rest goes through.
  await context.route('**/v1/stream?*', (route) => route.abort('connectionreset'));

  const tab = await context.newPage();
  await tab.goto(`${server.url}/healthz`);
  await tab.evaluate(async () => {
    const { Herald } = await import('/herald.js');
    window.recorded = { notifications: [], statuses: [] };
    window.herald = new Herald({ token: () => window.heraldTestToken({ user: 'alice' }) });
    herald.on('notification', (n) => recorded.notifications.push(n));
    herald.on('status', (s) => recorded.statuses.push(s));
  });
  await tab.waitForFunction(() => window.herald.transport === 'poll', null, { timeout: WAIT_MS });
  await waitForStatus(tab, 'open');
  const presence = await server.waitForPresence('alice', 1);
  assert.equal(presence.sessions[0].clients[0].transport, 'poll');
  for (let n = 1; n <= 3; n += 1) await server.publish({ to: { user: 'alice' }, data: n });
  assert.deepEqual((await waitForNotifications(tab, 3)).map((n) => n.data), [1, 2, 3]);
});

test('terminal reasons stop the client with a `closed` event', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const laptop = await newContext(browser, server);
  const phone = await newContext(browser, server);
  t.after(() => Promise.all([laptop.close(), phone.close()]));

  const closing = [
    await openTab(laptop, server, { ...alice, transport: 'sse' }),
    await openTab(laptop, server, { ...alice, transport: 'ws' }),
    await openTab(laptop, server, { ...alice, transport: 'poll' }),
  ];
  const staying = await openTab(phone, server, { user: 'alice', session: 'phone', transport: 'sse' });

  const response = await fetch(`${server.url}/v1/users/alice/sessions/laptop`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${server.apiKey}` },
  });
  assert.equal(response.status, 200);
  for (const tab of closing) {
    await tab.waitForFunction(() => window.recorded.closed.length > 0, null, { timeout: WAIT_MS });
    const state = await recorded(tab);
    assert.deepEqual(state.closed, [{ reason: 'session_closed' }], state.transport);
    assert.equal(state.status, 'closed');
  }
  // They stay closed: after a notification has reached the other session, none came back.
  await server.publish({ to: { user: 'alice' }, data: 'after' });
  await waitForNotifications(staying, 1);
  await until(async () => {
    const presence = await server.presence('alice');
    return presence.sessions.every((s) => s.session === 'phone');
  }, () => 'the closed session to be gone from presence');
  for (const tab of closing) assert.deepEqual((await recorded(tab)).notifications, []);
});
