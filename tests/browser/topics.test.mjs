// Topics in real tabs (herald.listen / unlisten, `topic` events), once per transport: tabs of
// different users in one room get each other's lines and a tab outside gets none; a listen made
// before the connection opens rides on `?topics=`; listens outlive a server restart (named again
// on reconnect) and changes made while offline are sent after the next `hello`; the token's
// `topics` claim refuses a listen, and nothing changes; a listen at user scope reaches the
// user's tabs opened later on another device and no other user's, and one at session scope
// every tab of the session and none of another, until it is unlistened.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import {
  HeraldServer, WAIT_MS, delay, launchBrowser, newContext, openTab, recorded, startHerald, until, waitForStatus,
} from './lib.mjs';

/** What the tokens of these tests allow: the rooms. */
const CLAIM = ['room:*'];
/** How long a tab that should get nothing is watched (after a barrier that it did get). */
const QUIET_MS = 500;

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** `POST /v1/notify` to a topic, ephemeral (topics have no log yet). */
function say(server, topic, data, extra = {}) {
  return server.publish({ to: { topic }, type: 'message', data, durable: false, ...extra });
}

/** The topic events a tab got. */
function topicEvents(page) {
  return page.evaluate(() => window.recorded.topic);
}

/** Waits until the tab has `count` topic events; returns them all. */
async function waitForTopicEvents(page, count) {
  try {
    await page.waitForFunction((count) => window.recorded.topic.length >= count, count, { timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`expected ${count} topic events, got ${JSON.stringify(await topicEvents(page))}`, { cause: error });
  }
  return topicEvents(page);
}

/**
 * The topics the server has `client` listening to (sorted), or `null` if it does not know the
 * tab: the API key's unlisten of a topic no tab here listens to changes nothing and answers
 * the tab's list.
 */
async function serverTopics(server, client) {
  const response = await fetch(`${server.url}/v1/topics/unlisten`, {
    method: 'POST',
    headers: { authorization: `Bearer ${server.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ client, topics: ['probe:never-listened'] }),
  });
  const answer = await response.json();
  if (response.status === 404) return null;
  assert.equal(response.status, 200, JSON.stringify(answer));
  return [...answer.topics].sort();
}

/**
 * Runs `herald.listen` or `unlisten` in the tab (with `options`, e.g. `{scope: 'user'}`):
 * `{topics}` (sorted: the server's order is its own) or `{error: {name, status, code}}`.
 */
function change(page, kind, topics, options) {
  return page.evaluate(async ({ kind, topics, options }) => {
    try {
      return { topics: [...await window.herald[kind](topics, options)].sort() };
    } catch (error) {
      return { error: { name: error.name, status: error.status, code: error.code, message: error.message } };
    }
  }, { kind, topics, options });
}

/** The tab's `herald.topics`, sorted. */
async function tabTopics(page) {
  return [...await page.evaluate(() => window.herald.topics)].sort();
}

/**
 * An ephemeral notification to `user`: a barrier. A tab's events reach it in publish order, so
 * once a tab has this, a topic event published before it would be there too.
 */
function barrier(server, user, n) {
  return server.publish({ to: { user }, type: 'barrier', data: { n }, durable: false });
}

/** Waits until the tab has the barrier notification `n`. */
async function waitForBarrier(page, n) {
  try {
    await page.waitForFunction((n) => window.recorded.notifications.some((e) => e.type === 'barrier' && e.data.n === n), n, { timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`barrier ${n} did not arrive: ${JSON.stringify(await page.evaluate(() => window.recorded))}`, { cause: error });
  }
}

/** The topic and text of each topic event the tab got. */
async function lines(page) {
  return (await topicEvents(page)).map((e) => [e.topic, e.data.text]);
}

/**
 * Records the tab's requests to /v1/listen and /v1/unlisten (`listen`, `unlisten`: their
 * bodies; `tabs`: the `X-Herald-Client` each named, or null), and its connection URLs.
 */
function watchRequests(page) {
  const seen = { listen: [], unlisten: [], tabs: [], connections: [] };
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.pathname === '/v1/listen') seen.listen.push(request.postDataJSON());
    if (url.pathname === '/v1/unlisten') seen.unlisten.push(request.postDataJSON());
    if (url.pathname === '/v1/listen' || url.pathname === '/v1/unlisten') seen.tabs.push(request.headers()['x-herald-client'] ?? null);
    if (url.pathname === '/v1/stream' || url.pathname === '/v1/poll') seen.connections.push(url);
  });
  page.on('websocket', (socket) => seen.connections.push(new URL(socket.url())));
  return seen;
}

for (const transport of ['sse', 'ws', 'poll']) {
  describe(`topics over ${transport}`, () => {
    test('two users in a room get each other\'s lines; a tab outside gets none', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const contexts = await Promise.all([0, 1, 2].map(() => newContext(browser, server)));
      t.after(() => Promise.all(contexts.map((c) => c.close())));
      const alice = await openTab(contexts[0], server, { user: 'alice', session: 's', transport, claim: CLAIM });
      const bob = await openTab(contexts[1], server, { user: 'bob', session: 's', transport, claim: CLAIM });
      const carol = await openTab(contexts[2], server, { user: 'carol', session: 's', transport, claim: CLAIM });

      assert.deepEqual(await change(alice, 'listen', 'room:1'), { topics: ['room:1'] });
      assert.deepEqual(await change(bob, 'listen', ['room:1']), { topics: ['room:1'] });
      // carol listens elsewhere: her barrier.
      assert.deepEqual(await change(carol, 'listen', 'room:2'), { topics: ['room:2'] });
      const [aliceClient, bobClient, carolClient] = await Promise.all([alice, bob, carol].map(async (p) => (await recorded(p)).client));
      assert.deepEqual(await serverTopics(server, aliceClient), ['room:1']);
      assert.deepEqual(await serverTopics(server, bobClient), ['room:1']);
      assert.deepEqual(await serverTopics(server, carolClient), ['room:2']);
      assert.deepEqual(await alice.evaluate(() => window.herald.topics), ['room:1']);

      // Each one's line goes to the room but its own tab (as an app's backend sends it).
      const fromAlice = await say(server, 'room:1', { text: 'hi bob', from: 'alice' }, { except_client: aliceClient });
      const fromBob = await say(server, 'room:1', { text: 'hi alice', from: 'bob' }, { except_client: bobClient });
      assert.deepEqual(fromAlice.notifications, [], 'a topic event is stored nowhere');
      if (transport !== 'poll') {
        // A poller between two polls is not "connected": only streams count exactly.
        assert.equal(fromAlice.delivered, 1);
        assert.equal(fromBob.delivered, 1);
      }
      // A line to the room for both, and carol's barrier: published after the others, so once
      // a tab has it, what came before for it is there too.
      await say(server, 'room:1', { text: 'welcome', from: 'server' });
      await say(server, 'room:2', { text: 'barrier', from: 'server' });

      const aliceGot = await waitForTopicEvents(alice, 2);
      const bobGot = await waitForTopicEvents(bob, 2);
      assert.deepEqual(aliceGot.map((e) => e.data.text), ['hi alice', 'welcome']);
      assert.deepEqual(bobGot.map((e) => e.data.text), ['hi bob', 'welcome']);
      for (const e of [...aliceGot, ...bobGot]) {
        assert.deepEqual(Object.keys(e).sort(), ['created_at', 'data', 'topic', 'type'], JSON.stringify(e));
        assert.equal(e.topic, 'room:1');
        assert.equal(e.type, 'message');
        assert.match(e.created_at, /^\d{4}-\d\d-\d\dT.*Z$/);
      }
      assert.deepEqual((await waitForTopicEvents(carol, 1)).map((e) => [e.topic, e.data.text]), [['room:2', 'barrier']]);
      await delay(QUIET_MS);
      assert.equal((await topicEvents(carol)).length, 1, 'nothing of room:1 reached carol');
      assert.equal((await topicEvents(alice)).length, 2, 'alice did not get her own line');

      for (const page of [alice, bob, carol]) {
        const state = await recorded(page);
        assert.deepEqual(state.notifications, [], 'topic events are not notifications');
        assert.equal(state.lastSeq, 0, 'topic events do not move the resume point');
        assert.equal(state.transport, transport);
        assert.deepEqual(state.closed, []);
      }

      // bob leaves: the next line reaches alice alone.
      assert.deepEqual(await change(bob, 'unlisten', 'room:1'), { topics: [] });
      assert.deepEqual(await serverTopics(server, bobClient), []);
      await say(server, 'room:1', { text: 'bob left', from: 'server' });
      await say(server, 'room:1', { text: 'still here', from: 'server' });
      assert.deepEqual((await waitForTopicEvents(alice, 4)).slice(2).map((e) => e.data.text), ['bob left', 'still here']);
      await delay(QUIET_MS);
      assert.equal((await topicEvents(bob)).length, 2, 'nothing reached bob after he left');
    });

    test('a listen made before the connection opens rides on ?topics= and the hello lists it', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const context = await newContext(browser, server);
      t.after(() => context.close());
      const page = await context.newPage();
      page.on('pageerror', (error) => console.error(`[page error] ${error.message}`));
      const seen = watchRequests(page);
      await startHerald(page, server, { user: 'alice', session: 's', transport, claim: CLAIM, listen: ['room:1', 'room:2'] });

      assert.deepEqual((await page.evaluate(() => window.listened)).sort(), ['room:1', 'room:2']);
      assert.ok(seen.connections.length >= 1);
      assert.equal(seen.connections[0].searchParams.get('topics'), 'room:1,room:2', String(seen.connections[0]));
      assert.deepEqual(seen.listen, [], 'no POST /v1/listen: the hello listed both');
      const { client } = await recorded(page);
      assert.deepEqual(await serverTopics(server, client), ['room:1', 'room:2']);

      await say(server, 'room:2', { text: 'one' });
      const got = await waitForTopicEvents(page, 1);
      assert.deepEqual(got.map((e) => [e.topic, e.data.text]), [['room:2', 'one']]);
    });

    test('listens outlive a server restart, and changes made offline are sent after the next hello', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const context = await newContext(browser, server);
      t.after(() => context.close());
      const page = await openTab(context, server, { user: 'alice', session: 's', transport, claim: CLAIM });
      const seen = watchRequests(page);
      assert.deepEqual(await change(page, 'listen', ['room:1', 'room:2']), { topics: ['room:1', 'room:2'] });
      const { client } = await recorded(page);

      // The restart forgets every listen: the tab names its topics again when it reconnects.
      await server.stop();
      if (transport !== 'poll') await waitForStatus(page, 'reconnecting');
      await server.restart();
      await until(async () => (await serverTopics(server, client))?.length === 2, () => 'the tab listening again after the restart');
      assert.deepEqual(await serverTopics(server, client), ['room:1', 'room:2']);
      await waitForStatus(page, 'open');
      await say(server, 'room:1', { text: 'after the restart' });
      assert.deepEqual((await waitForTopicEvents(page, 1)).map((e) => e.data.text), ['after the restart']);

      // Offline, the tab changes its mind: leaves room:2, joins room:3. The server keeps the
      // client's listens meanwhile (it lingers), so the unlisten must be sent after the hello.
      await context.setOffline(true);
      await waitForStatus(page, 'offline');
      const listensBefore = seen.listen.length;
      await page.evaluate(() => {
        window.offlineChanges = Promise.all([window.herald.unlisten('room:2'), window.herald.listen('room:3')]);
      });
      assert.deepEqual((await page.evaluate(() => window.herald.topics)).sort(), ['room:1', 'room:3'], 'the changes not sent yet show');
      assert.deepEqual(await serverTopics(server, client), ['room:1', 'room:2'], 'nothing sent while offline');
      await context.setOffline(false);
      const [afterUnlisten, afterListen] = await page.evaluate(() => window.offlineChanges);
      assert.ok(!afterUnlisten.includes('room:2'), JSON.stringify(afterUnlisten));
      assert.deepEqual([...afterListen].sort(), ['room:1', 'room:3']);
      assert.deepEqual(await serverTopics(server, client), ['room:1', 'room:3']);
      assert.deepEqual(seen.unlisten.slice(-1), [{ topics: ['room:2'], scope: 'client' }], 'the held unlisten was sent');
      assert.equal(seen.listen.length, listensBefore, 'room:3 rode on ?topics=, no POST');
      assert.equal(seen.connections.at(-1).searchParams.get('topics'), 'room:1,room:3');

      await say(server, 'room:2', { text: 'left behind' });
      await say(server, 'room:3', { text: 'joined offline' });
      await say(server, 'room:1', { text: 'kept' });
      const got = await waitForTopicEvents(page, 3);
      assert.deepEqual(got.map((e) => [e.topic, e.data.text]), [
        ['room:1', 'after the restart'], ['room:3', 'joined offline'], ['room:1', 'kept'],
      ]);
      const state = await recorded(page);
      assert.equal(state.client, client, 'the same tab throughout');
      assert.deepEqual(state.closed, []);
    });

    test('a listen the token\'s claim does not allow is refused, and nothing changes', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const context = await newContext(browser, server);
      t.after(() => context.close());
      const page = await openTab(context, server, { user: 'alice', session: 's', transport, claim: CLAIM });
      const seen = watchRequests(page);
      assert.deepEqual(await change(page, 'listen', 'room:1'), { topics: ['room:1'] });
      const { client } = await recorded(page);

      // Connected: the server refuses the whole list.
      const refused = await change(page, 'listen', ['room:2', 'secret:1']);
      assert.equal(refused.error?.name, 'HeraldError', JSON.stringify(refused));
      assert.equal(refused.error.status, 403);
      assert.equal(refused.error.code, 'topic_forbidden');
      assert.equal(seen.listen.length, 2, 'the server was asked');
      assert.deepEqual(await serverTopics(server, client), ['room:1'], 'room:2 was not listened to either');
      assert.deepEqual(await page.evaluate(() => window.herald.topics), ['room:1']);

      // A name that is no topic is refused at once, without asking the server.
      const invalid = await page.evaluate(() => {
        try {
          window.herald.listen('room 1');
          return 'accepted';
        } catch (error) {
          return error.name;
        }
      });
      assert.equal(invalid, 'TypeError');
      assert.equal(seen.listen.length, 2);

      // Offline: refused by the claim at once (not held for the next connection, which the
      // server would refuse for it).
      await context.setOffline(true);
      await waitForStatus(page, 'offline');
      await page.evaluate(() => {
        window.heldRefusal = null;
        window.herald.listen('secret:2').then(
          () => { window.heldRefusal = 'accepted'; },
          (error) => { window.heldRefusal = `${error.status} ${error.code}`; },
        );
      });
      await page.waitForFunction(() => window.heldRefusal !== null, null, { timeout: 5_000 });
      assert.equal(await page.evaluate(() => window.heldRefusal), '403 topic_forbidden');
      assert.equal(await page.evaluate(() => window.herald.status), 'offline', 'refused while still offline');
      await context.setOffline(false);
      await waitForStatus(page, 'open');
      assert.equal(seen.connections.at(-1).searchParams.get('topics'), 'room:1');

      await say(server, 'secret:1', { text: 'secret' });
      await say(server, 'room:2', { text: 'not joined' });
      await say(server, 'room:1', { text: 'joined' });
      assert.deepEqual((await waitForTopicEvents(page, 1)).map((e) => e.data.text), ['joined']);
      await delay(QUIET_MS);
      assert.equal((await topicEvents(page)).length, 1);
      const state = await recorded(page);
      assert.equal(state.status, 'open');
      assert.deepEqual(state.closed, []);
      assert.equal(state.client, client);

      // Before the first connection the token is not known yet: the listen rides on ?topics=,
      // the server refuses that connection whole, and the tab connects again without it.
      const early = await context.newPage();
      await startHerald(early, server, { user: 'bob', session: 's', transport, claim: CLAIM, listen: ['room:9', 'secret:9'] });
      const earlyRefusal = await early.evaluate(() => window.listened.then(() => 'accepted', (e) => `${e.status} ${e.code}`));
      assert.equal(earlyRefusal, '403 topic_forbidden');
      const earlyState = await recorded(early);
      assert.equal(earlyState.status, 'open');
      assert.deepEqual(earlyState.closed, [], 'the refusal did not stop the client');
      assert.deepEqual(await early.evaluate(() => window.herald.topics), []);
      assert.deepEqual(await serverTopics(server, earlyState.client), []);
    });

    test('a listen at user scope reaches the user\'s tabs opened later, on another device, and no other user\'s', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      const contexts = await Promise.all([0, 1, 2].map(() => newContext(browser, server)));
      t.after(() => Promise.all(contexts.map((c) => c.close())));
      const laptop = await openTab(contexts[0], server, { user: 'alice', session: 'laptop', transport, claim: CLAIM });
      const bob = await openTab(contexts[2], server, { user: 'bob', session: 'laptop', transport, claim: CLAIM });
      const seen = watchRequests(laptop);

      // "Follow": kept by the server for the user, posted at once without naming the tab.
      assert.deepEqual(await change(laptop, 'listen', 'room:1', { scope: 'user' }), { topics: ['room:1'] });
      assert.deepEqual(seen.listen, [{ topics: ['room:1'], scope: 'user' }]);
      assert.deepEqual(seen.tabs, [null], 'no X-Herald-Client at user scope');
      assert.deepEqual(await tabTopics(laptop), ['room:1'], 'the tab listens to its user\'s topics');

      // Another device of alice, opened afterwards: its first connection lists the topic.
      const phone = await openTab(contexts[1], server, { user: 'alice', session: 'phone', transport, claim: CLAIM });
      assert.deepEqual(await tabTopics(phone), ['room:1']);
      const phoneClient = (await recorded(phone)).client;
      assert.deepEqual(await serverTopics(server, phoneClient), ['room:1']);

      await say(server, 'room:1', { text: 'followed' });
      await barrier(server, 'bob', 1);
      for (const page of [laptop, phone]) {
        assert.deepEqual((await waitForTopicEvents(page, 1)).map((e) => [e.topic, e.data.text]), [['room:1', 'followed']]);
      }
      await waitForBarrier(bob, 1);
      assert.deepEqual(await lines(bob), [], 'bob does not follow alice\'s topics');

      // The phone unlistens for the user: no tab of alice gets the room any more (the phone
      // keeps its own client-scope room:3, which its `topics` still lists).
      assert.deepEqual(await change(phone, 'listen', 'room:3'), { topics: ['room:1', 'room:3'] });
      assert.deepEqual(await change(phone, 'unlisten', 'room:1', { scope: 'user' }), { topics: [] });
      assert.deepEqual(await tabTopics(phone), ['room:3'], 'room:1 left the tab\'s topics');
      assert.deepEqual(await serverTopics(server, phoneClient), ['room:3']);
      await say(server, 'room:1', { text: 'unfollowed' });
      await barrier(server, 'alice', 2);
      for (const page of [laptop, phone]) await waitForBarrier(page, 2);
      await delay(QUIET_MS);
      for (const page of [laptop, phone]) assert.deepEqual(await lines(page), [['room:1', 'followed']]);
      for (const page of [laptop, phone, bob]) assert.deepEqual((await recorded(page)).closed, []);
    });

    test('a listen at session scope reaches every tab of the session and none of another; after unlisten none', async (t) => {
      const server = await HeraldServer.start();
      t.after(() => server.dispose());
      // One browser profile is one session: its tabs share it. The phone is another session.
      const [laptopContext, phoneContext] = await Promise.all([0, 1].map(() => newContext(browser, server)));
      t.after(() => Promise.all([laptopContext, phoneContext].map((c) => c.close())));
      const laptop = { user: 'alice', session: 'laptop', transport, claim: CLAIM };
      const first = await openTab(laptopContext, server, laptop);
      const second = await openTab(laptopContext, server, laptop);
      const phone = await openTab(phoneContext, server, { ...laptop, session: 'phone' });
      const seen = watchRequests(first);

      assert.deepEqual(await change(first, 'listen', ['room:1', 'room:2'], { scope: 'session' }), { topics: ['room:1', 'room:2'] });
      assert.deepEqual(seen.listen, [{ topics: ['room:1', 'room:2'], scope: 'session' }]);
      assert.deepEqual(seen.tabs, [null], 'no X-Herald-Client at session scope');
      assert.deepEqual(await tabTopics(first), ['room:1', 'room:2']);
      // A tab of the session opened afterwards listens too.
      const third = await openTab(laptopContext, server, laptop);
      assert.deepEqual(await tabTopics(third), ['room:1', 'room:2']);
      const session = [first, second, third];
      const clients = await Promise.all(session.map(async (page) => (await recorded(page)).client));
      assert.equal(new Set(clients).size, 3, 'three tabs');
      for (const client of clients) assert.deepEqual(await serverTopics(server, client), ['room:1', 'room:2']);
      assert.deepEqual(await serverTopics(server, (await recorded(phone)).client), []);

      await say(server, 'room:1', { text: 'to the session' });
      await barrier(server, 'alice', 1);
      for (const page of session) {
        assert.deepEqual((await waitForTopicEvents(page, 1)).map((e) => [e.topic, e.data.text]), [['room:1', 'to the session']]);
      }
      await waitForBarrier(phone, 1);
      assert.deepEqual(await lines(phone), [], 'the phone is another session');

      // Any tab of the session unlistens for it: none gets the room any more.
      assert.deepEqual(await change(second, 'unlisten', 'room:1', { scope: 'session' }), { topics: ['room:2'] });
      assert.deepEqual(await tabTopics(second), ['room:2']);
      for (const client of clients) assert.deepEqual(await serverTopics(server, client), ['room:2']);
      await say(server, 'room:1', { text: 'after unlisten' });
      await say(server, 'room:2', { text: 'still the session\'s' });
      await barrier(server, 'alice', 2);
      for (const page of [...session, phone]) await waitForBarrier(page, 2);
      await delay(QUIET_MS);
      for (const page of session) {
        assert.deepEqual(await lines(page), [['room:1', 'to the session'], ['room:2', 'still the session\'s']]);
      }
      assert.deepEqual(await lines(phone), []);

      assert.deepEqual(await change(third, 'unlisten', 'room:2', { scope: 'session' }), { topics: [] });
      await say(server, 'room:2', { text: 'after the last unlisten' });
      await barrier(server, 'alice', 3);
      for (const page of session) await waitForBarrier(page, 3);
      await delay(QUIET_MS);
      for (const page of session) assert.equal((await lines(page)).length, 2, 'nothing after the last unlisten');
      for (const page of [...session, phone]) assert.deepEqual((await recorded(page)).closed, []);
    });
  });
}
