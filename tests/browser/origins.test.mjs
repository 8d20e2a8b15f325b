// Other origins in a real browser: a page of another site (here another port of 127.0.0.1: same
// site, so the browser sends the user's `herald_token` cookie along) can neither read the user's
// history over a WebSocket nor evict the user's tab with no-cors streams; a page of an origin in
// `--allowed-origins` (here `http://localhost:<port>`) uses herald.js across origins (CORS), on
// every transport, inbox changes (preflighted) included.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, WAIT_MS, launchBrowser, newContext, openTab, recorded, waitForNotifications, waitForStatus } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('a page of another origin cannot use the cookie: no WebSocket replay, no eviction of the real tab', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  // The other site's page is served by another server (another port of 127.0.0.1).
  const other = await HeraldServer.start();
  t.after(() => other.dispose());
  const context = await newContext(browser, server);
  t.after(() => context.close());
  await server.publish({ to: { user: 'alice' }, data: 'private' });
  const token = server.token({ user: 'alice', session: 'laptop' });
  // Cookies ignore ports: the cookie of 127.0.0.1 goes with requests from the other page too.
  await context.addCookies([{ name: 'herald_token', value: token, domain: '127.0.0.1', path: '/', sameSite: 'Lax' }]);
  const tab = await openTab(context, server, { user: 'alice', session: 'laptop', transport: 'sse' });

  const evil = await context.newPage();
  await evil.goto(`${other.url}/healthz`);
  const attack = await evil.evaluate(async ({ target, streams }) => {
    const ws = await new Promise((resolve) => {
      const frames = [];
      const socket = new WebSocket(`${target.replace('http', 'ws')}/v1/ws?last_event_id=0`);
      socket.onmessage = (message) => frames.push(message.data);
      socket.onclose = () => resolve({ frames, opened: frames.length > 0 });
      setTimeout(() => { socket.close(); resolve({ frames, opened: true }); }, 3000);
    });
    // No-cors GETs need no preflight, and their answers need not be readable to evict a tab.
    const fetches = await Promise.all(Array.from({ length: streams }, () =>
      fetch(`${target}/v1/stream`, { mode: 'no-cors', credentials: 'include' }).then(() => 'answered', (e) => String(e))));
    return { ws, fetches };
  }, { target: server.url, streams: 60 });
  assert.deepEqual(attack.ws.frames, [], 'nothing was sent to the other site over the WebSocket');
  assert.equal(attack.fetches.length, 60);

  await server.waitForPresence('alice', 1);
  await server.publish({ to: { user: 'alice' }, data: 'still here' });
  const got = await waitForNotifications(tab, 1);
  assert.deepEqual(got.map((n) => n.data), ['still here']);
  const state = await recorded(tab);
  assert.deepEqual(state.closed, [], 'the real tab was not evicted');
  assert.equal(state.status, 'open');
});

for (const transport of ['sse', 'ws', 'poll']) {
  test(`a page of an allowed origin uses herald.js across origins (${transport})`, async (t) => {
    const server = await HeraldServer.start({ allowedOrigins: (port) => `http://localhost:${port}` });
    t.after(() => server.dispose());
    const context = await newContext(browser, server);
    t.after(() => context.close());
    const page = await context.newPage();
    page.on('pageerror', (error) => console.error(`[page error] ${error.message}`));
    // The page is on http://localhost:<port>; Herald is at http://127.0.0.1:<port>.
    await page.goto(`http://localhost:${server.port}/healthz`);
    await page.evaluate(async ({ url, transport }) => {
      const { Herald } = await import(`${url}/herald.js`);
      window.recorded = { notifications: [], closed: [] };
      window.herald = new Herald({
        url,
        transport,
        fallback: false,
        inbox: true,
        token: () => window.heraldTestToken({ user: 'alice', session: 'laptop', ttlSeconds: 3600 }),
      });
      herald.on('notification', (n) => window.recorded.notifications.push(n));
      herald.on('closed', (c) => window.recorded.closed.push(c));
    }, { url: server.url, transport });
    await waitForStatus(page, 'open');
    const { notifications } = await server.publish({ to: { user: 'alice' }, data: 'across origins' });
    const got = await waitForNotifications(page, 1);
    assert.deepEqual(got.map((n) => n.data), ['across origins']);
    const counts = await page.evaluate(async (seq) => (await herald.inbox.mark([seq], 'read')).counts, notifications[0].seq);
    assert.equal(counts.unread, 0);
    await page.waitForFunction(() => herald.inbox.counts?.unread === 0, null, { timeout: WAIT_MS });
    assert.equal((await page.evaluate(() => herald.transport)), transport);
  });
}
