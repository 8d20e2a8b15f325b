// Durable topics in real tabs, once per transport: a tab in two rooms gets every durable event
// of each exactly once, tseqs 1..N in order, whether it was published while the tab was
// connected, while the tab was offline and the server restarting (SQLite, same data dir), or
// while the server was down for a restart; a room listened to while connected resumes from the
// listen's answer; a position older than the topic's retention gets one `topic_reset` for that
// room alone, and the other room resumes exactly.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, WAIT_MS, delay, launchBrowser, newContext, openTab, recorded, waitForNotifications, waitForStatus } from './lib.mjs';

const CLAIM = ['room:*'];
/** How long a tab is watched for a duplicate after the last event it should get. */
const QUIET_MS = 500;

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** Durable publishes to `topic` (the default), each answered with its tseq; returns them. */
async function publish(server, topic, count, label) {
  const tseqs = [];
  for (let n = 0; n < count; n += 1) {
    const answer = await server.publish({ to: { topic }, type: 'message', data: { label } });
    assert.equal(answer.topic?.topic, topic, JSON.stringify(answer));
    tseqs.push(answer.topic.tseq);
  }
  return tseqs;
}

/** Records `topic_reset` events and every connection URL of the tab (from now on). */
async function watch(page) {
  const urls = [];
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.pathname === '/v1/stream' || url.pathname === '/v1/poll') urls.push(url);
  });
  page.on('websocket', (socket) => urls.push(new URL(socket.url())));
  await page.evaluate(() => {
    window.topicResets = [];
    window.herald.on('topic_reset', (r) => window.topicResets.push(r));
  });
  return urls;
}

/** Waits until the tab has the tseqs `expected` (`{topic: count}`) of each topic at least. */
async function waitForTseqs(page, expected) {
  try {
    await page.waitForFunction((expected) => Object.entries(expected).every(([topic, count]) => (
      window.recorded.topic.filter((e) => e.topic === topic).length >= count
    )), expected, { timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`expected ${JSON.stringify(expected)} events, got ${JSON.stringify(await tseqsOf(page))}`, { cause: error });
  }
  return tseqsOf(page);
}

/** Each topic's tseqs as the tab got them, in order. */
async function tseqsOf(page) {
  const events = await page.evaluate(() => window.recorded.topic);
  const got = {};
  for (const e of events) (got[e.topic] ??= []).push(e.tseq);
  return got;
}

function range(from, to) {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}

/** The resume point each of these connections (or polls) gave, as sent. */
function resumes(urls) {
  return urls.map((url) => (url.pathname === '/v1/poll'
    ? `${url.searchParams.get('after')} ${url.searchParams.get('positions')}`
    : url.searchParams.get('last_event_id')));
}

for (const transport of ['sse', 'ws', 'poll']) {
  describe(`durable topics over ${transport}`, () => {
    test('every room\'s tseqs arrive once, in order: connected, offline across a restart, and while the server was down', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const context = await newContext(browser, server);
      t.after(() => context.close());

      // Before the tab listens: not for it (a new listen starts at the topic's last tseq).
      assert.deepEqual(await publish(server, 'room:1', 2, 'before'), [1, 2]);
      const page = await openTab(context, server, { user: 'alice', session: 's', transport, claim: CLAIM, listen: ['room:1'] });
      // room:2 is listened to while connected: it resumes from the listen's answer, before
      // any event of it came.
      assert.deepEqual([...await page.evaluate(() => window.herald.listen('room:2'))].sort(), ['room:1', 'room:2']);
      assert.deepEqual(await page.evaluate(() => window.herald.positions), { 'room:1': 2, 'room:2': 0 });
      const urls = await watch(page);

      // Offline, and the server restarts meanwhile (it forgets every client and queue): what
      // is published then reaches the tab only by resuming each room from its position.
      await context.setOffline(true);
      await waitForStatus(page, 'offline');
      await server.restart();
      await publish(server, 'room:1', 2, 'offline');
      await publish(server, 'room:2', 3, 'offline');
      await server.publish({ to: { user: 'alice' }, data: 'offline' });
      await context.setOffline(false);
      await waitForStatus(page, 'open');
      assert.deepEqual(await waitForTseqs(page, { 'room:1': 2, 'room:2': 3 }), { 'room:1': [3, 4], 'room:2': [1, 2, 3] });

      // Connected.
      await publish(server, 'room:2', 1, 'connected');
      await publish(server, 'room:1', 2, 'connected');
      await server.publish({ to: { user: 'alice' }, data: 'connected' });
      await waitForTseqs(page, { 'room:1': 4, 'room:2': 4 });

      // The server stops (the tab is told `shutdown`) and comes back; published before the tab
      // is back, then live.
      await server.stop();
      if (transport !== 'poll') await waitForStatus(page, 'reconnecting');
      await server.restart();
      await publish(server, 'room:1', 1, 'down');
      await publish(server, 'room:2', 2, 'down');
      await waitForStatus(page, 'open');
      await publish(server, 'room:2', 1, 'live');
      await publish(server, 'room:1', 1, 'live');
      await server.publish({ to: { user: 'alice' }, data: 'live' });

      const expected = { 'room:1': range(3, 8), 'room:2': range(1, 7) };
      await waitForTseqs(page, { 'room:1': 6, 'room:2': 7 });
      assert.deepEqual((await waitForNotifications(page, 3)).map((n) => n.seq), [1, 2, 3]);
      await delay(QUIET_MS);
      assert.deepEqual(await tseqsOf(page), expected, 'each tseq once, in order');
      const events = await page.evaluate(() => window.recorded.topic);
      assert.deepEqual(
        [...new Set(events.map((e) => e.data.label))],
        ['offline', 'connected', 'down', 'live'],
        'nothing of before the listen',
      );
      for (const e of events) assert.deepEqual(Object.keys(e).sort(), ['created_at', 'data', 'topic', 'tseq', 'type']);
      const state = await recorded(page);
      assert.deepEqual(state.notifications.map((n) => n.data), ['offline', 'connected', 'live']);
      assert.equal(state.lastSeq, 3);
      assert.deepEqual(state.resets, []);
      assert.deepEqual(state.closed, []);
      assert.deepEqual(await page.evaluate(() => window.topicResets), []);
      assert.deepEqual(await page.evaluate(() => window.herald.positions), { 'room:1': 8, 'room:2': 7 });

      // The resume points given: the seq and both rooms' positions (one id for a stream,
      // `after` and `positions` for a poll).
      const given = resumes(urls);
      const pattern = transport === 'poll' ? /^\d+ room:1=\d+,room:2=\d+$/ : /^\d+;room:1=\d+;room:2=\d+$/;
      assert.ok(given.length >= 2 && given.every((resume) => pattern.test(resume)), JSON.stringify(given));
      assert.ok(given.includes(transport === 'poll' ? '0 room:1=2,room:2=0' : '0;room:1=2;room:2=0'), JSON.stringify(given));

      // Unlistened: its position is dropped (listened again, it would start afresh).
      await page.evaluate(() => window.herald.unlisten('room:2'));
      assert.deepEqual(await page.evaluate(() => window.herald.positions), { 'room:1': 8 });
    });

    test('a position older than the room\'s retention: one topic_reset for that room; the other resumes exactly', async (t) => {
      const server = await HeraldServer.start({ env: { HERALD_TOPIC_RETENTION_MAX_EVENTS: '3' } });
      t.after(() => server.dispose());
      const context = await newContext(browser, server);
      t.after(() => context.close());
      const page = await openTab(context, server, { user: 'alice', session: 's', transport, claim: CLAIM, listen: ['room:1', 'room:2'] });
      await watch(page);
      await publish(server, 'room:1', 1, 'connected');
      await publish(server, 'room:2', 1, 'connected');
      await waitForTseqs(page, { 'room:1': 1, 'room:2': 1 });

      await context.setOffline(true);
      await waitForStatus(page, 'offline');
      await server.restart(); // a poller's queue (kept between polls) is gone too
      await publish(server, 'room:1', 6, 'offline'); // keeps 5, 6, 7
      await publish(server, 'room:2', 2, 'offline');
      await context.setOffline(false);
      await waitForStatus(page, 'open');
      await page.waitForFunction(() => window.topicResets.length >= 1, null, { timeout: WAIT_MS });
      await publish(server, 'room:1', 1, 'live');
      const got = await waitForTseqs(page, { 'room:1': 2, 'room:2': 3 });
      await delay(QUIET_MS);
      assert.deepEqual(await tseqsOf(page), got);
      assert.deepEqual(got, { 'room:1': [1, 8], 'room:2': [1, 2, 3] });
      assert.deepEqual(await page.evaluate(() => window.topicResets), [{ topic: 'room:1', last_tseq: 7 }]);
      assert.deepEqual(await page.evaluate(() => window.herald.positions), { 'room:1': 8, 'room:2': 3 });
      const state = await recorded(page);
      assert.deepEqual(state.resets, [], 'the user\'s notifications lost nothing');
      assert.deepEqual(state.closed, []);
    });
  });
}
