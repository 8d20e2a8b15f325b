// Targeting in real tabs: alice in two browser profiles (two sessions) with two tabs each, bob
// in one. A user notification shows in all 4 of alice's tabs exactly once and in none of bob's;
// a session notification in 2; a client notification in 1. Once per transport.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, launchBrowser, newContext, openTab, recorded, waitForNotifications } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

for (const transport of ['sse', 'ws', 'poll']) {
  describe(`delivery over ${transport}`, () => {
    test('user, session and client targets reach exactly their tabs, once each', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const laptop = await newContext(browser, server);
      const phone = await newContext(browser, server);
      const bobs = await newContext(browser, server);
      t.after(() => Promise.all([laptop.close(), phone.close(), bobs.close()]));

      const alice = [
        await openTab(laptop, server, { user: 'alice', session: 'laptop', transport }),
        await openTab(laptop, server, { user: 'alice', session: 'laptop', transport }),
        await openTab(phone, server, { user: 'alice', session: 'phone', transport }),
        await openTab(phone, server, { user: 'alice', session: 'phone', transport }),
      ];
      const bob = await openTab(bobs, server, { user: 'bob', session: 'desk', transport });

      // Every tab is its own client, and presence shows the transport.
      const presence = await server.waitForPresence('alice', 4);
      const clients = await Promise.all(alice.map(async (page) => (await recorded(page)).client));
      assert.equal(new Set(clients).size, 4, `four distinct client ids: ${clients}`);
      assert.deepEqual(presence.sessions.map((s) => s.session).sort(), ['laptop', 'phone']);
      for (const session of presence.sessions) {
        assert.equal(session.clients.length, 2);
        for (const client of session.clients) assert.equal(client.transport, transport);
      }
      await server.waitForPresence('bob', 1);

      const toUser = await server.publish({ to: { user: 'alice' }, type: 'test', data: 'user' });
      const toSession = await server.publish({ to: { user: 'alice', session: 'phone' }, type: 'test', data: 'session' });
      const toClient = await server.publish({ to: { client: clients[1] }, type: 'test', data: 'client' });
      if (transport !== 'poll') {
        // A poller between two polls is not "connected": only streams count exactly.
        assert.equal(toUser.delivered, 4);
        assert.equal(toSession.delivered, 2);
        assert.equal(toClient.delivered, 1);
      }
      // A barrier to every tab: once a tab has it, everything published before for it is there
      // too (seqs of one user arrive in order).
      await server.publish({ to: { users: ['alice', 'bob'] }, type: 'test', data: 'barrier' });

      const expected = [
        ['user', 'barrier'],
        ['user', 'client', 'barrier'],
        ['user', 'session', 'barrier'],
        ['user', 'session', 'barrier'],
      ];
      for (const [i, page] of alice.entries()) {
        const got = await waitForNotifications(page, expected[i].length);
        assert.deepEqual(got.map((n) => n.data), expected[i], `alice's tab ${i}`);
        const seqs = got.map((n) => n.seq);
        assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), 'in seq order');
        for (const n of got) {
          assert.equal(n.type, 'test');
          assert.match(n.created_at, /^\d{4}-\d\d-\d\dT.*Z$/);
          assert.equal(n.event, undefined, 'the WebSocket frame\'s "event" is not passed on');
        }
      }
      assert.deepEqual((await waitForNotifications(bob, 1)).map((n) => n.data), ['barrier']);
      for (const page of [...alice, bob]) {
        const state = await recorded(page);
        assert.equal(state.transport, transport, 'no fallback happened');
        assert.deepEqual(state.closed, []);
        assert.deepEqual(state.resets, []);
        assert.deepEqual(state.statuses, ['connecting', 'open']);
      }

      // Ephemeral notifications reach the connected tabs too, without a seq.
      if (transport !== 'poll') {
        await server.publish({ to: { user: 'bob' }, type: 'typing', durable: false, data: 'ephemeral' });
        const got = await waitForNotifications(bob, 2);
        assert.equal(got[1].data, 'ephemeral');
        assert.equal(got[1].seq, undefined);
      }
    });
  });
}
