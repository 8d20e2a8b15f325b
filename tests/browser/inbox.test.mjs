// The inbox in real tabs: alice in two browser profiles (two sessions), two tabs in the first.
// Marking a notification read in one tab clears it in the other tab of the session and in the
// other session; "mark all read" clears every badge; a reloaded tab shows the right badge at
// once (read after `hello`, not from events it missed). Once per transport.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, WAIT_MS, launchBrowser, newContext, openTab, startHerald, waitForNotifications } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** Waits until the tab's `herald.inbox.counts.unread` is `unread`; returns its counts. */
async function waitForUnread(page, unread, label) {
  try {
    await page.waitForFunction((unread) => window.herald.inbox.counts?.unread === unread, unread, { timeout: WAIT_MS });
  } catch (error) {
    const counts = await page.evaluate(() => window.herald.inbox.counts);
    throw new Error(`${label}: expected unread ${unread}, have ${JSON.stringify(counts)}`, { cause: error });
  }
  return page.evaluate(() => window.herald.inbox.counts);
}

/** The user's counts as the server has them (publisher API). */
async function serverCounts(server, user) {
  const response = await fetch(`${server.url}/v1/users/${encodeURIComponent(user)}/inbox/counts`, {
    headers: { authorization: `Bearer ${server.apiKey}` },
  });
  assert.equal(response.status, 200);
  return (await response.json()).counts;
}

for (const transport of ['sse', 'ws', 'poll']) {
  describe(`inbox over ${transport}`, () => {
    test('a mark in one tab reaches the other tab and the other session; mark all; reload', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const laptop = await newContext(browser, server);
      const phone = await newContext(browser, server);
      t.after(() => Promise.all([laptop.close(), phone.close()]));

      const options = { user: 'alice', transport, inbox: true };
      const tabA = await openTab(laptop, server, { ...options, session: 'laptop' });
      const tabB = await openTab(laptop, server, { ...options, session: 'laptop' });
      const phoneTab = await openTab(phone, server, { ...options, session: 'phone' });
      const tabs = { 'laptop tab A': tabA, 'laptop tab B': tabB, 'phone tab': phoneTab };
      const everywhere = (unread) =>
        Promise.all(Object.entries(tabs).map(([label, page]) => waitForUnread(page, unread, label)));
      await server.waitForPresence('alice', 3);
      await everywhere(0);

      // Three new notifications: every badge says 3 (the counts follow new notifications).
      for (const text of ['one', 'two', 'three']) {
        await server.publish({ to: { user: 'alice' }, type: 'message.new', data: { text } });
      }
      await everywhere(3);
      const seqs = (await waitForNotifications(tabA, 3)).map((n) => n.seq);

      // Tab A reads the first: its own badge is right as soon as the mark answers, without
      // waiting for an event (the server leaves it out of the event: X-Herald-Client).
      const answer = await tabA.evaluate(async (seq) => {
        const answer = await window.herald.inbox.mark([seq], 'read');
        return { answer, unreadNow: window.herald.inbox.counts.unread };
      }, seqs[0]);
      assert.equal(answer.unreadNow, 2, 'tab A applied its own answer at once');
      assert.equal(answer.answer.op, 'mark');
      assert.deepEqual(answer.answer.seqs, [seqs[0]]);
      assert.equal(answer.answer.changed, 1);
      await everywhere(2);
      for (const page of [tabB, phoneTab]) {
        const events = await page.evaluate(() => window.recorded.inbox.filter((e) => e.op === 'mark'));
        assert.deepEqual(events.map((e) => [e.as, e.seqs]), [['read', [seqs[0]]]]);
      }

      // "Mark all read" from the other session.
      const all = await phoneTab.evaluate(() => window.herald.inbox.markAll());
      assert.equal(all.all_up_to, seqs[2]);
      assert.equal(all.changed, 2);
      const finalCounts = await everywhere(0);
      const truth = await serverCounts(server, 'alice');
      assert.deepEqual(truth, { unread: 0, unseen: 0, total: 3, archived: 0, version: truth.version });
      for (const counts of finalCounts) assert.deepEqual(counts, truth, 'every tab holds the server\'s counts');

      // Tab A got the phone's "mark all" from the server, and (the server sends one user's events
      // in order) so would have got its own first mark before it, had it not been left out.
      const marksInA = await tabA.evaluate(() => window.recorded.inbox.filter((e) => e.op === 'mark'));
      assert.deepEqual(marksInA.map((e) => e.all_up_to ?? e.seqs), [[seqs[0]], seqs[2]]);

      // A page that lists its inbox sees the state of each notification.
      const page = await tabB.evaluate(() => window.herald.inbox.list({ limit: 2 }));
      assert.deepEqual(page.notifications.map((n) => n.seq), [seqs[2], seqs[1]]);
      assert.ok(page.notifications.every((n) => n.read_at !== null && n.seen_at !== null && n.archived_at === null));
      assert.equal(page.next_before, seqs[1]);

      // A reloaded tab shows the right badge (0) again.
      await tabB.reload();
      await startHerald(tabB, server, { ...options, session: 'laptop' });
      assert.deepEqual(await waitForUnread(tabB, 0, 'laptop tab B after reload'), truth);

      // One more: 1 everywhere, the reloaded tab too.
      await server.publish({ to: { user: 'alice' }, type: 'message.new', data: { text: 'four' } });
      await everywhere(1);

      // A tab reloaded after it: it has seen no event about it, so its badge can only come from
      // reading the counts after connecting.
      await phoneTab.reload();
      await startHerald(phoneTab, server, { ...options, session: 'phone' });
      await waitForUnread(phoneTab, 1, 'phone tab after reload');
      const afterReload = await phoneTab.evaluate(() => window.recorded);
      assert.deepEqual(afterReload.notifications, [], 'the reloaded tab started from now');
      assert.ok(afterReload.inbox.every((e) => e.op !== 'append'), 'no append event reached the reloaded tab');
      assert.deepEqual(await serverCounts(server, 'alice'), await phoneTab.evaluate(() => window.herald.inbox.counts));

      for (const page of Object.values(tabs)) {
        const state = await page.evaluate(() => ({ transport: window.herald.transport, closed: window.recorded.closed }));
        assert.equal(state.transport, transport, 'no fallback happened');
        assert.deepEqual(state.closed, []);
      }
    });
  });
}

test('without `inbox: true` the stream does not follow new notifications; marks, pages and errors still work', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const context = await newContext(browser, server);
  t.after(() => context.close());
  const tab = await openTab(context, server, { user: 'bob', session: 'desk', transport: 'sse' });
  assert.equal(await tab.evaluate(() => window.herald.inbox.counts), null, 'no counts read unless asked');

  const { notifications } = await server.publish({ to: { user: 'bob' }, type: 't', data: 1 });
  await server.publish({ to: { user: 'bob' }, type: 't', data: 2 });
  await waitForNotifications(tab, 2);
  const result = await tab.evaluate(async (seq) => {
    const refreshed = await window.herald.inbox.refresh();
    const marked = await window.herald.inbox.mark([seq], 'archived');
    const archived = await window.herald.inbox.list({ status: 'archived' });
    const deleted = await window.herald.inbox.delete([seq]);
    let error = null;
    try {
      await window.herald.inbox.list({ status: 'nonsense' });
    } catch (e) {
      error = { name: e.name, status: e.status, code: e.code };
    }
    let typeError = null;
    try {
      await window.herald.inbox.mark(5, 'read');
    } catch (e) {
      typeError = e.name;
    }
    return { refreshed, marked, archived, deleted, error, typeError, counts: window.herald.inbox.counts, events: window.recorded.inbox };
  }, notifications[0].seq);
  assert.equal(result.refreshed.unread, 2);
  assert.equal(result.marked.counts.unread, 1);
  assert.equal(result.marked.counts.archived, 1);
  assert.deepEqual(result.archived.notifications.map((n) => n.data), [1]);
  assert.equal(result.deleted.changed, 1);
  assert.deepEqual(result.counts, { ...result.deleted.counts });
  assert.deepEqual(result.counts, { unread: 1, unseen: 1, total: 1, archived: 0, version: result.counts.version });
  assert.deepEqual(result.error, { name: 'HeraldError', status: 400, code: 'invalid_status' });
  assert.equal(result.typeError, 'TypeError');
  assert.deepEqual(result.events.map((e) => e.op), ['mark', 'delete'], 'its own changes, and no append');
});
