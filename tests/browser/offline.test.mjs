// A tab that loses its network misses notifications and, once back, shows them all, once each,
// in order, with the same client id. Once per transport.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, launchBrowser, newContext, notifications, openTab, recorded, waitForNotifications, waitForStatus } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

for (const transport of ['sse', 'ws', 'poll']) {
  test(`an offline tab catches up once back online (${transport})`, async (t) => {
    const server = await HeraldServer.start();
    t.after(() => server.dispose());
    const offlineContext = await newContext(browser, server);
    const onlineContext = await newContext(browser, server);
    t.after(() => Promise.all([offlineContext.close(), onlineContext.close()]));

    const tab = await openTab(offlineContext, server, { user: 'alice', session: 'laptop', transport });
    const witness = await openTab(onlineContext, server, { user: 'alice', session: 'phone', transport });
    await server.publish({ to: { user: 'alice' }, data: 0 });
    await waitForNotifications(tab, 1);
    const before = await recorded(tab);

    await offlineContext.setOffline(true);
    await waitForStatus(tab, 'offline');
    // The server saw the tab go: what is published now can only reach it by catching up.
    // (A poller stays in presence for a while after its last poll, so check the stream ones.)
    if (transport !== 'poll') await server.waitForPresence('alice', 1);

    for (let n = 1; n <= 5; n += 1) await server.publish({ to: { user: 'alice' }, data: n });
    await waitForNotifications(witness, 6);
    assert.equal((await notifications(tab)).length, 1, 'nothing reached the offline tab');

    await offlineContext.setOffline(false);
    const got = await waitForNotifications(tab, 6);
    assert.deepEqual(got.map((n) => n.data), [0, 1, 2, 3, 4, 5], 'all five, once each, in order');
    assert.deepEqual(got.map((n) => n.seq), [1, 2, 3, 4, 5, 6]);
    // And nothing more arrives: a live one comes next, with no duplicate before it.
    await server.publish({ to: { user: 'alice' }, data: 6 });
    assert.deepEqual((await waitForNotifications(tab, 7)).map((n) => n.data), [0, 1, 2, 3, 4, 5, 6]);

    const state = await recorded(tab);
    assert.equal(state.client, before.client, 'the tab kept its client id');
    assert.equal(state.status, 'open');
    assert.ok(state.statuses.includes('offline'), state.statuses.join());
    assert.deepEqual(state.resets, []);
    assert.deepEqual(state.closed, []);
  });
}
