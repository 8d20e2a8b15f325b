// The server restarts (same data dir, same port): every tab, whatever its transport, reconnects
// by itself, keeps its client id and catches up on what was published while it was away.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, launchBrowser, newContext, openTab, recorded, waitForNotifications, waitForStatus } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('every tab reconnects by itself after a server restart and catches up', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const context = await newContext(browser, server);
  t.after(() => context.close());

  const tabs = [];
  for (const transport of ['sse', 'sse', 'ws', 'poll']) {
    tabs.push(await openTab(context, server, { user: 'alice', session: 'laptop', transport }));
  }
  await server.publish({ to: { user: 'alice' }, data: 'before' });
  for (const tab of tabs) await waitForNotifications(tab, 1);
  const clients = await Promise.all(tabs.map(async (tab) => (await recorded(tab)).client));

  await server.stop();
  // Streams were told `closed: shutdown`, and are trying again.
  for (const tab of tabs.slice(0, 3)) await waitForStatus(tab, 'reconnecting');

  await server.restart();
  // Published before the tabs are back: they must catch up on these.
  for (const data of ['while away 1', 'while away 2', 'while away 3']) {
    await server.publish({ to: { user: 'alice' }, data });
  }
  for (const tab of tabs) await waitForStatus(tab, 'open');
  await server.publish({ to: { user: 'alice' }, data: 'after' });

  const expected = ['before', 'while away 1', 'while away 2', 'while away 3', 'after'];
  for (const [i, tab] of tabs.entries()) {
    const got = await waitForNotifications(tab, expected.length);
    assert.deepEqual(got.map((n) => n.data), expected, `tab ${i}`);
    assert.deepEqual(got.map((n) => n.seq), [1, 2, 3, 4, 5], `tab ${i}`);
    const state = await recorded(tab);
    assert.equal(state.client, clients[i], `tab ${i} kept its client id across the restart`);
    assert.deepEqual(state.closed, [], `tab ${i} did not stop`);
    assert.deepEqual(state.resets, []);
  }
  const presence = await server.waitForPresence('alice', 4);
  assert.deepEqual(presence.sessions[0].clients.map((c) => c.client).sort(), [...clients].sort());
});
