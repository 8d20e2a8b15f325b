// Short-lived tokens: the server closes a stream with `token_expired` (a poll stops waiting at
// the expiry), herald.js asks the page's `token` function for a new one and resumes, and no
// notification is lost or repeated. Once per transport.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, delay, launchBrowser, newContext, openTab, recorded, waitForNotifications } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

const TTL_SECONDS = 3;

for (const transport of ['sse', 'ws', 'poll']) {
  test(`an expiring token is replaced through the token function without loss (${transport})`, async (t) => {
    const server = await HeraldServer.start();
    t.after(() => server.dispose());
    const context = await newContext(browser, server);
    t.after(() => context.close());
    const tab = await openTab(context, server, { user: 'alice', session: 'laptop', transport, ttlSeconds: TTL_SECONDS });
    const client = (await recorded(tab)).client;
    const tokensAtStart = context.mintedTokens;

    // Publish steadily across three expiries of the token.
    const count = 24;
    const started = Date.now();
    for (let n = 0; n < count; n += 1) {
      await server.publish({ to: { user: 'alice' }, data: n });
      // Pacing the publishes over time is the point here (it is not a wait for an event).
      await delay((TTL_SECONDS * 3 * 1000) / count);
    }
    assert.ok(Date.now() - started >= TTL_SECONDS * 3 * 1000);

    const got = await waitForNotifications(tab, count);
    assert.deepEqual(got.map((n) => n.data), [...Array(count).keys()], 'every notification once, in order');
    assert.deepEqual(got.map((n) => n.seq), [...Array(count).keys()].map((n) => n + 1));
    assert.ok(context.mintedTokens - tokensAtStart >= 2, `the token function was called again (${context.mintedTokens - tokensAtStart} times)`);
    const state = await recorded(tab);
    assert.equal(state.client, client, 'same client id with every new token');
    assert.deepEqual(state.closed, [], 'token expiry is not terminal with a token function');
    assert.equal(state.transport, transport);
  });
}

test('with a fixed token that expires, the client stops with `closed: token_expired`', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const context = await newContext(browser, server);
  t.after(() => context.close());
  const page = await context.newPage();
  await page.goto(`${server.url}/healthz`);
  const token = server.token({ user: 'alice', ttlSeconds: 2 });
  await page.evaluate(async (token) => {
    const { Herald } = await import('/herald.js');
    window.herald = new Herald({ token });
    window.closedWith = new Promise((resolve) => herald.on('closed', resolve));
  }, token);
  const closed = await page.evaluate(() => window.closedWith);
  assert.deepEqual(closed, { reason: 'token_expired' });
  assert.equal(await page.evaluate(() => window.herald.status), 'closed');
});
