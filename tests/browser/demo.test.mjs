// The demo at /demo, driven as a person would: alice on a laptop (two tabs) and on a phone, bob
// on his desk. Notifications sent from the page land where they should, the unread counters and
// the presence panel follow, and screenshots go to artifacts/ (look at them).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { HeraldServer, WAIT_MS, artifactPath, launchBrowser } from './lib.mjs';

let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

async function openDemo(context, server, query) {
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[page error] ${error.message}`));
  await page.goto(`${server.url}/demo${query}`);
  if (query) await page.waitForSelector('#status[data-status="open"]', { timeout: WAIT_MS });
  return page;
}

function unread(page, count) {
  return page.waitForSelector(`#unread[data-count="${count}"]`, { timeout: WAIT_MS });
}

async function send(page, { to, text }) {
  await page.waitForSelector(`#send-to option[value="${to}"]`, { state: 'attached', timeout: WAIT_MS });
  await page.selectOption('#send-to', to);
  await page.fill('#send-form input[name="text"]', text);
  await page.click('#send-form button[type="submit"]');
  await page.waitForFunction((text) => document.querySelector('#send-result').textContent.startsWith('Sent'), text, { timeout: WAIT_MS });
}

test('the demo: sign in, live notifications to a user, a session and a tab, presence; screenshots', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const laptop = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const phone = await browser.newContext({ viewport: { width: 400, height: 860 }, isMobile: true, deviceScaleFactor: 2 });
  const desk = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  t.after(() => Promise.all([laptop.close(), phone.close(), desk.close()]));

  // Signing in through the form.
  const tab1 = await openDemo(laptop, server, '');
  assert.match(await tab1.textContent('footer'), /dev-mode demo/);
  await tab1.fill('#signin-form input[name="user"]', 'alice');
  await tab1.fill('#signin-form input[name="session"]', 'laptop');
  await tab1.screenshot({ path: artifactPath('demo-sign-in.png') });
  await tab1.click('#signin-form button[type="submit"]');
  await tab1.waitForSelector('#status[data-status="open"]', { timeout: WAIT_MS });
  assert.match(tab1.url(), /\?user=alice&session=laptop&transport=sse$/);

  // More tabs by URL (as "Open another tab" does), another session on WebSocket, and bob.
  const tab2 = await openDemo(laptop, server, '?user=alice&session=laptop&transport=sse');
  const phoneTab = await openDemo(phone, server, '?user=alice&session=phone&transport=ws');
  const bob = await openDemo(desk, server, '?user=bob&session=desk&transport=poll');
  await server.waitForPresence('alice', 3);

  await send(tab1, { to: 'user:alice', text: 'Lunch at noon?' });
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 1);

  await send(tab1, { to: 'session:phone', text: 'Your package has shipped' });
  await unread(phoneTab, 2);

  // From the phone, to the laptop's second tab, picked in the presence panel.
  const tab2Client = await tab2.evaluate(() => document.querySelector('#who-client').textContent);
  await phoneTab.waitForSelector(`.client[title="client ${tab2Client}"]`, { timeout: WAIT_MS });
  await phoneTab.click(`.client[title="client ${tab2Client}"]`);
  assert.equal(await phoneTab.inputValue('#send-to'), `client:${tab2Client}`);
  await phoneTab.fill('#send-form input[name="text"]', 'Only this tab');
  await phoneTab.click('#send-form button[type="submit"]');
  await unread(tab2, 2);

  await send(bob, { to: 'user:bob', text: 'Hello bob' });
  await unread(bob, 1);

  // The counters are exact: a barrier to everyone, then count.
  await send(tab1, { to: 'user:alice', text: 'Meeting moved to 3 pm' });
  await unread(tab1, 2);
  await unread(tab2, 3);
  await unread(phoneTab, 3);
  assert.equal(await bob.textContent('#unread'), '1');
  assert.equal(await tab1.title(), '(2) Herald demo');

  // Presence, live: two sessions, three tabs, with their transports.
  await tab1.waitForFunction(() => document.querySelectorAll('#presence .client').length === 3, null, { timeout: WAIT_MS });
  assert.equal(await tab1.locator('#presence .session').count(), 2);
  assert.equal(await tab1.locator('#presence .tag.ws').count(), 1);
  assert.equal(await tab1.locator('#presence .client.me').count(), 1);

  // Read one on the phone, so its screenshot shows both states.
  await phoneTab.click('.note.unread >> nth=2');
  await unread(phoneTab, 2);

  await tab1.screenshot({ path: artifactPath('demo-alice-laptop.png'), fullPage: true });
  await phoneTab.screenshot({ path: artifactPath('demo-alice-phone.png'), fullPage: true });
  await bob.screenshot({ path: artifactPath('demo-bob-long-polling.png'), fullPage: true });

  // A tab closing shows up in the others' presence.
  await tab2.close();
  await tab1.waitForFunction(() => document.querySelectorAll('#presence .client').length === 2, null, { timeout: WAIT_MS });
});
