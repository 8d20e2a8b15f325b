// The demo at /demo, driven as a person would: alice on a laptop (two tabs) and on a phone, bob
// on his desk. Notifications sent from the page land where they should, the inbox (the unread
// badge, read and archived state, "mark all read") and the presence panel follow in every tab,
// and screenshots go to artifacts/ (look at them).

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

async function unread(page, count) {
  try {
    await page.waitForSelector(`#unread[data-count="${count}"]`, { timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`${page.url()}: expected unread ${count}, the badge says ${await page.textContent('#unread')}`, { cause: error });
  }
}

/** The seqs of the notifications the tab lists, newest first, and which of them are unread. */
function shown(page) {
  return page.evaluate(() => [...document.querySelectorAll('.note[data-seq]')].map((item) => ({
    seq: Number(item.dataset.seq),
    unread: item.classList.contains('unread'),
  })));
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

  // The badge is the user's inbox: a notification for one session counts in every session.
  await send(tab1, { to: 'session:phone', text: 'Your package has shipped' });
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 2);

  // From the phone, to the laptop's second tab, picked in the presence panel.
  const tab2Client = await tab2.evaluate(() => document.querySelector('#who-client').textContent);
  await phoneTab.waitForSelector(`.client[title="client ${tab2Client}"]`, { timeout: WAIT_MS });
  await phoneTab.click(`.client[title="client ${tab2Client}"]`);
  assert.equal(await phoneTab.inputValue('#send-to'), `client:${tab2Client}`);
  await phoneTab.fill('#send-form input[name="text"]', 'Only this tab');
  await phoneTab.click('#send-form button[type="submit"]');
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 3);

  await send(bob, { to: 'user:bob', text: 'Hello bob' });
  await unread(bob, 1);

  // The counters are exact: a barrier to everyone, then count.
  await send(tab1, { to: 'user:alice', text: 'Meeting moved to 3 pm' });
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 4);
  assert.equal(await bob.textContent('#unread'), '1');
  assert.equal(await tab1.title(), '(4) Herald demo');
  // Every tab lists the whole inbox, also what was sent to another session or tab.
  for (const page of [tab1, tab2, phoneTab]) {
    await page.waitForFunction(() => document.querySelectorAll('.note.unread').length === 4, null, { timeout: WAIT_MS });
  }

  // Presence, live: two sessions, three tabs, with their transports.
  await tab1.waitForFunction(() => document.querySelectorAll('#presence .client').length === 3, null, { timeout: WAIT_MS });
  assert.equal(await tab1.locator('#presence .session').count(), 2);
  assert.equal(await tab1.locator('#presence .tag.ws').count(), 1);
  assert.equal(await tab1.locator('#presence .client.me').count(), 1);

  // Read one on the phone: read everywhere. Archive one on the laptop: gone everywhere.
  const seqs = (await shown(tab1)).map((n) => n.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => b - a), 'newest first');
  await phoneTab.click(`.note[data-seq="${seqs[3]}"]`);
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 3);
  await tab2.waitForSelector(`.note[data-seq="${seqs[3]}"]:not(.unread)`, { timeout: WAIT_MS });
  await tab1.click(`.note[data-seq="${seqs[1]}"] .archive`);
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 2);
  await phoneTab.waitForSelector(`.note[data-seq="${seqs[1]}"]`, { state: 'detached', timeout: WAIT_MS });
  assert.match(await tab1.textContent('#inbox-summary'), /^2 unread · 3 in the inbox · 1 archived$/);

  await tab1.screenshot({ path: artifactPath('demo-alice-laptop.png'), fullPage: true });
  await phoneTab.screenshot({ path: artifactPath('demo-alice-phone.png'), fullPage: true });
  await bob.screenshot({ path: artifactPath('demo-bob-long-polling.png'), fullPage: true });

  // "Mark all read" on the phone; a reloaded laptop tab lists the inbox with its state.
  await phoneTab.click('#mark-read');
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 0);
  assert.ok(await tab1.isDisabled('#mark-read'));
  await tab1.reload();
  await tab1.waitForSelector('#status[data-status="open"]', { timeout: WAIT_MS });
  await tab1.waitForFunction(() => document.querySelectorAll('.note[data-seq]').length === 3, null, { timeout: WAIT_MS });
  await unread(tab1, 0);
  assert.deepEqual(await shown(tab1), [seqs[0], seqs[2], seqs[3]].map((seq) => ({ seq, unread: false })));
  await send(tab2, { to: 'user:alice', text: 'Sent after the reload' });
  for (const page of [tab1, tab2, phoneTab]) await unread(page, 1);
  await tab1.screenshot({ path: artifactPath('demo-alice-inbox.png'), fullPage: true });

  // A tab closing shows up in the others' presence.
  await tab2.close();
  await tab1.waitForFunction(() => document.querySelectorAll('#presence .client').length === 2, null, { timeout: WAIT_MS });
});

/** The room lines a demo tab shows, oldest first: `room from: text`. */
function roomLines(page) {
  return page.evaluate(() => [...document.querySelectorAll('#room-messages .room-message')].reverse()
    .map((item) => (item.classList.contains('room-reset')
      ? `${item.dataset.room} reset: ${item.querySelector('.text').textContent}`
      : `${item.dataset.room} ${item.querySelector('.from').textContent}: ${item.querySelector('.text').textContent}`)));
}

/** The tseqs of the room lines a demo tab shows, oldest first (`room #tseq`). */
function roomTseqs(page) {
  return page.evaluate(() => [...document.querySelectorAll('#room-messages .room-message')].reverse()
    .map((item) => `${item.dataset.room} #${item.dataset.tseq}`));
}

async function waitForRoomLines(page, count) {
  try {
    await page.waitForFunction((count) => document.querySelectorAll('#room-messages .room-message').length >= count, count, { timeout: WAIT_MS });
  } catch (error) {
    throw new Error(`expected ${count} room lines, the tab shows ${JSON.stringify(await roomLines(page))}`, { cause: error });
  }
  return roomLines(page);
}

async function joinRoom(page, room) {
  await page.fill('#room-name', room);
  await page.click('#room-join');
  await page.waitForFunction((room) => document.querySelector('#room-status').dataset.rooms.split(',').includes(room), room, { timeout: WAIT_MS });
}

async function sayInRoom(page, text) {
  await page.fill('#room-form input[name="text"]', text);
  await page.click('#room-form button[type="submit"]');
  await page.waitForFunction(() => document.querySelector('#room-result').textContent.startsWith('Said'), null, { timeout: WAIT_MS });
  const said = await page.textContent('#room-result');
  await page.evaluate(() => { document.querySelector('#room-result').textContent = ''; });
  return said;
}

test('the demo\'s room: users who joined get every line, the others none; leaving and refusals; lines missed offline come back', async (t) => {
  const server = await HeraldServer.start();
  t.after(() => server.dispose());
  const contexts = await Promise.all([0, 1, 2].map(() => browser.newContext({ viewport: { width: 1280, height: 1000 } })));
  t.after(() => Promise.all(contexts.map((c) => c.close())));
  const alice = await openDemo(contexts[0], server, '?user=alice&session=laptop&transport=sse');
  const bob = await openDemo(contexts[1], server, '?user=bob&session=desk&transport=ws');
  const carol = await openDemo(contexts[2], server, '?user=carol&session=phone&transport=poll');

  assert.equal(await alice.inputValue('#room-name'), 'room:lobby');
  await joinRoom(alice, 'room:lobby');
  await joinRoom(bob, 'room:lobby');
  assert.equal(await bob.textContent('#room-status'), 'In room:lobby.');
  // carol is in another room: her barrier.
  await joinRoom(carol, 'room:other');

  // Durable lines: each has its number in the room's log.
  assert.equal(await sayInRoom(alice, 'Hello room'), 'Said in room:lobby as #1, to 2 tabs.');
  assert.equal(await sayInRoom(bob, 'Hi alice'), 'Said in room:lobby as #2, to 2 tabs.');
  await carol.fill('#room-name', 'room:other');
  await sayInRoom(carol, 'Anyone here?');
  const expected = ['room:lobby alice: Hello room', 'room:lobby bob: Hi alice'];
  assert.deepEqual(await waitForRoomLines(alice, 2), expected);
  assert.deepEqual(await waitForRoomLines(bob, 2), expected);
  assert.deepEqual(await waitForRoomLines(carol, 1), ['room:other carol: Anyone here?']);
  // Room lines are not notifications: the inbox stays empty.
  assert.equal(await alice.textContent('#unread'), '0');
  await alice.screenshot({ path: artifactPath('demo-room.png'), fullPage: true });

  // bob leaves; a name outside the demo tokens' claim (room:*) is refused.
  await bob.click('#room-leave');
  await bob.waitForFunction(() => document.querySelector('#room-status').textContent === 'Not in a room.', null, { timeout: WAIT_MS });
  await bob.fill('#room-name', 'lobby');
  await bob.click('#room-join');
  await bob.waitForFunction(() => document.querySelector('#room-status').textContent.startsWith('Not joined'), null, { timeout: WAIT_MS });
  assert.match(await bob.textContent('#room-status'), /topics. claim does not allow/);
  assert.equal(await sayInRoom(alice, 'Still here'), 'Said in room:lobby as #3, to 1 tab.');
  // Refused by the server too: the demo's route publishes to rooms only.
  const refused = await alice.evaluate(async () => {
    const response = await fetch('/demo/room', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ room: 'lobby', user: 'alice', text: 'x' }),
    });
    return [response.status, (await response.json()).error.code];
  });
  assert.deepEqual(refused, [400, 'invalid_request']);
  await bob.fill('#room-name', 'room:other');
  await joinRoom(bob, 'room:other');
  await sayInRoom(carol, 'bob joined');
  assert.deepEqual((await waitForRoomLines(bob, 3)).slice(2), ['room:other carol: bob joined']);
  assert.deepEqual(await waitForRoomLines(alice, 3), [...expected, 'room:lobby alice: Still here']);
  assert.deepEqual(await roomLines(bob), [...expected, 'room:other carol: bob joined'], 'nothing of room:lobby after bob left');
  assert.deepEqual(await roomLines(carol), ['room:other carol: Anyone here?', 'room:other carol: bob joined']);

  // alice loses her network; carol says two lines in the lobby meanwhile. Back online, alice's
  // tab shows them, once each and in order, before the next live one.
  await contexts[0].setOffline(true);
  await alice.waitForSelector('#status[data-status="offline"]', { timeout: WAIT_MS });
  await carol.fill('#room-name', 'room:lobby');
  assert.match(await sayInRoom(carol, 'While you were away'), /^Said in room:lobby as #4, /);
  assert.match(await sayInRoom(carol, 'Still away?'), /^Said in room:lobby as #5, /);
  await contexts[0].setOffline(false);
  await alice.waitForSelector('#status[data-status="open"]', { timeout: WAIT_MS });
  assert.equal(await sayInRoom(carol, 'Welcome back'), 'Said in room:lobby as #6, to 1 tab.');
  assert.deepEqual(await waitForRoomLines(alice, 6), [
    ...expected, 'room:lobby alice: Still here',
    'room:lobby carol: While you were away', 'room:lobby carol: Still away?', 'room:lobby carol: Welcome back',
  ]);
  assert.deepEqual(await roomTseqs(alice), [1, 2, 3, 4, 5, 6].map((n) => `room:lobby #${n}`));
  await alice.screenshot({ path: artifactPath('demo-room-back-online.png'), fullPage: true });
});
