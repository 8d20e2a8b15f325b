// The admin page (`GET /admin` on the admin listener, --admin-listen) in headless Chromium, as
// an operator uses it: a wrong API key refused, signing in with the right one, two users whose
// sessions and tabs appear live as their herald.js pages open, closing a tab and a session from
// the page (the tabs get `closed`), a test notification that arrives in the tab, sign-out.
// Screenshots go to artifacts/ (look at them).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, WAIT_MS, artifactPath, launchBrowser, newContext, openTab, until, waitForNotifications } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** The admin listener's URL, as `herald serve` prints it. */
async function adminUrl(server) {
  let match;
  await until(() => (match = server.stderr.match(/herald: admin on (http:\/\/\S+)/)), () => `the admin address in:\n${server.stderr}`);
  return match[1];
}

/** The tabs the admin page shows for `user`, by session: `{session: [transport…]}`. */
function tree(page, user) {
  return page.evaluate((user) => {
    const shown = {};
    for (const session of document.querySelectorAll(`.user[data-user="${user}"] .session`)) {
      shown[session.dataset.session] = [...session.querySelectorAll('.tab')].map((tab) => tab.dataset.transport).sort();
    }
    return shown;
  }, user);
}

async function waitForTree(page, user, expected) {
  let shown;
  await until(async () => {
    shown = await tree(page, user);
    return JSON.stringify(shown) === JSON.stringify(expected);
  }, () => `the admin page's tree of ${user}: ${JSON.stringify(shown)}, expected ${JSON.stringify(expected)}`);
}

function waitForClosed(page, reason) {
  return page.waitForFunction((reason) => window.recorded.closed.some((c) => c.reason === reason), reason, { timeout: WAIT_MS });
}

test('the admin page: sign in, live users → sessions → tabs, close a tab and a session, a test notification', async (t) => {
  const server = await HeraldServer.start({ env: { HERALD_ADMIN_LISTEN: '127.0.0.1:0' } });
  t.after(() => server.dispose());
  const admin = await adminUrl(server);
  const operator = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const laptop = await newContext(browser, server);
  const phone = await newContext(browser, server);
  const desk = await newContext(browser, server);
  t.after(() => Promise.all([operator.close(), laptop.close(), phone.close(), desk.close()]));

  const page = await operator.newPage();
  page.on('pageerror', (error) => console.error(`[admin page error] ${error.message}`));
  await page.goto(`${admin}/admin`);
  await page.waitForSelector('#signin-form', { state: 'visible', timeout: WAIT_MS });

  // A wrong key: refused, with a message, and no cookie.
  await page.fill('#signin-form input[name="key"]', 'not-the-key');
  await page.click('#signin-form button[type="submit"]');
  await page.waitForFunction(() => /API key is wrong/.test(document.querySelector('#signin-error').textContent), null, { timeout: WAIT_MS });
  assert.ok(await page.isHidden('#console'));
  assert.deepEqual(await operator.cookies(), []);
  await page.screenshot({ path: artifactPath('admin-sign-in-refused.png') });

  // The key: signed in; the cookie is the session's, HttpOnly and SameSite=Strict, not the key.
  await page.fill('#signin-form input[name="key"]', server.apiKey);
  await page.click('#signin-form button[type="submit"]');
  await page.waitForSelector('#console', { state: 'visible', timeout: WAIT_MS });
  const [cookie] = await operator.cookies();
  assert.equal(cookie.name, 'herald_admin');
  assert.equal(cookie.path, '/admin');
  assert.ok(cookie.httpOnly);
  assert.equal(cookie.sameSite, 'Strict');
  assert.notEqual(cookie.value, server.apiKey);
  assert.ok(!page.url().includes(server.apiKey), 'the key is never in a URL');
  await page.waitForSelector('#live[data-live="true"]', { timeout: WAIT_MS });

  // Two users' tabs open in other browsers; the page shows them appear, without a reload.
  await page.fill('#search', 'adm-');
  await page.click('#search-form button[type="submit"]');
  const alice1 = await openTab(laptop, server, { user: 'adm-alice', session: 'laptop', transport: 'sse' });
  await waitForTree(page, 'adm-alice', { laptop: ['sse'] });
  const alice2 = await openTab(laptop, server, { user: 'adm-alice', session: 'laptop', transport: 'ws' });
  const alicePhone = await openTab(phone, server, { user: 'adm-alice', session: 'phone', transport: 'poll' });
  const bob = await openTab(desk, server, { user: 'adm-bob', session: 'desk', transport: 'sse' });
  await waitForTree(page, 'adm-alice', { laptop: ['sse', 'ws'], phone: ['poll'] });
  await waitForTree(page, 'adm-bob', { desk: ['sse'] });
  // The overview counts them too (a sample every 5 s).
  await page.waitForSelector('.chart[data-metric="tabs"][data-now="4"]', { timeout: WAIT_MS });
  await page.screenshot({ path: artifactPath('admin-users-live.png'), fullPage: true });

  // Close one tab (the WebSocket one): it gets `closed: evicted`, its sibling stays.
  const wsClient = await alice2.evaluate(() => window.herald.client);
  await page.click(`.tab[data-client="${wsClient}"] .close-tab`);
  await waitForClosed(alice2, 'evicted');
  await waitForTree(page, 'adm-alice', { laptop: ['sse'], phone: ['poll'] });

  // Close the phone's session: its tab gets `closed: session_closed`; the laptop stays open.
  await page.click('.user[data-user="adm-alice"] .session[data-session="phone"] .close-session');
  await waitForClosed(alicePhone, 'session_closed');
  await waitForTree(page, 'adm-alice', { laptop: ['sse'] });
  assert.equal(await alice1.evaluate(() => window.herald.status), 'open');
  assert.deepEqual(await alice1.evaluate(() => window.recorded.closed), []);

  // A test notification to bob arrives in his tab, and shows in his log on the page.
  await page.click('.user[data-user="adm-bob"] .open-user');
  await page.fill('#notify-form input[name="text"]', 'Hello from the admin page');
  await page.click('#notify-form button[type="submit"]');
  const [note] = await waitForNotifications(bob, 1);
  assert.equal(note.type, 'admin.test');
  assert.deepEqual(note.data, { text: 'Hello from the admin page', from: 'admin' });
  await page.waitForFunction(() => /^Sent: seq 1, delivered to 1/.test(document.querySelector('#notify-result').textContent), null, { timeout: WAIT_MS });
  await page.waitForSelector('#detail-log li[data-seq="1"]', { timeout: WAIT_MS });
  await page.waitForSelector('.user[data-user="adm-bob"] .badge[data-unread="1"]', { timeout: WAIT_MS });
  // The overview's next sample has the publish, and the closes by reason.
  await page.waitForFunction(() => Number(document.querySelector('.chart[data-metric="publishes_per_sec"]').dataset.now) > 0, null, { timeout: WAIT_MS });
  await page.waitForFunction(() => {
    const legend = document.querySelector('.chart[data-metric="closes"] .legend').textContent;
    return legend.includes('evicted') && legend.includes('session_closed');
  }, null, { timeout: WAIT_MS });
  await page.screenshot({ path: artifactPath('admin-after-actions.png'), fullPage: true });

  // Sign out: the page asks for the key again, and the old cookie is refused.
  await page.click('#sign-out');
  await page.waitForSelector('#signin-form', { state: 'visible', timeout: WAIT_MS });
  const refused = await fetch(`${admin}/admin/api/session`, { headers: { cookie: `herald_admin=${cookie.value}` } });
  assert.equal(refused.status, 401);
});
