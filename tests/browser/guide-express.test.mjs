// docs/guides/express.md, run: the Express example (examples/express) and Herald behind the
// same-origin nginx of deploy/nginx/same-origin.conf (the app at `/`, Herald under `/herald/`),
// each a real process on free ports. In Chromium a user signs in with the app's toy sign-in, the
// page loads /herald/herald.js and a token from the app, and a notification sent by the app's
// background job shows in the page, over SSE in one browser profile and WebSocket in another,
// both through nginx; and in a third profile on another origin than Herald's (CORS, Herald's
// --allowed-origins). Then the publisher API is not reachable through nginx, and signing out
// closes that session's stream (the other stays). And the guide quotes the example's files
// exactly.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ROOT, WAIT_MS, freePort, launchBrowser, until } from './lib.mjs';
import { API_KEY, SECRET, checkQuotes, signIn, startApp, startHeraldMemory } from './apps.mjs';
import { Nginx } from './nginx.mjs';

const cleanup = [];
after(async () => {
  for (const step of cleanup.reverse()) await step().catch((error) => console.error(error));
});

test('the Express guide quotes examples/express exactly', () => {
  assert.ok(checkQuotes('docs/guides/express.md') >= 4);
});

test('the Express guide: a job of the app notifies, the page shows it, through the same-origin nginx', { timeout: 120_000 }, async () => {
  // A second instance of the app, on its own origin, reaches Herald on Herald's origin (the
  // guide's "Herald on another origin instead"): Herald lists that origin only.
  const appPort = await freePort();
  const crossOriginPort = await freePort();
  const crossOrigin = `http://127.0.0.1:${crossOriginPort}`;
  const herald = await startHeraldMemory({ env: { HERALD_ALLOWED_ORIGINS: crossOrigin } });
  cleanup.push(() => herald.stop());
  const startExpress = async (port, env = {}) => {
    const app = await startApp('the Express example', process.execPath, [join(ROOT, 'examples', 'express', 'app.mjs')], {
      env: {
        PORT: String(port),
        HERALD_URL: herald.url,
        HERALD_SECRET: SECRET,
        HERALD_API_KEY: API_KEY,
        EXPORT_DELAY_MS: '200',
        ...env,
      },
    });
    cleanup.push(() => app.stop());
    return app;
  };
  const app = await startExpress(appPort);
  const crossOriginApp = await startExpress(crossOriginPort, { HERALD_PUBLIC_URL: herald.url });
  const dir = mkdtempSync(join(tmpdir(), 'herald-guide-express-'));
  cleanup.push(async () => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort();
  const nginx = await Nginx.start({
    dir,
    port,
    conf: join(ROOT, 'deploy', 'nginx', 'same-origin.conf'),
    replacements: [
      [/^(\s*listen )127\.0\.0\.1:8080;/, `$1127.0.0.1:${port};`],
      [/^(\s*server )127\.0\.0\.1:3000;/, `$1127.0.0.1:${appPort};`],
      [/^(\s*server )127\.0\.0\.1:7300;/, `$1127.0.0.1:${herald.port};`],
      [/^(\s*access_log )\/var\/log\/nginx\//, `$1${dir}/`],
    ],
    probe: '/herald/healthz',
  });
  cleanup.push(() => nginx.stop());
  const browser = await launchBrowser();
  cleanup.push(() => browser.close());

  try {
    // Two browser profiles: two sign-ins of alice, one on SSE, one on WebSocket.
    const sse = await signIn(browser, `${nginx.url}/`, 'alice');
    const ws = await signIn(browser, `${nginx.url}/?transport=ws`, 'alice');
    assert.equal(await sse.evaluate(() => window.herald.transport), 'sse');
    assert.equal(await ws.evaluate(() => window.herald.transport), 'ws');

    // The job: the request answers at once, the notification comes when the export is done.
    await sse.click('#export');
    for (const page of [sse, ws]) {
      await page.waitForSelector('#notifications li[data-type="export.ready"]', { timeout: WAIT_MS });
      assert.equal(await page.textContent('#notifications li'), 'Your export is ready');
      await page.waitForFunction(() => document.getElementById('unread').textContent === '1', null, { timeout: WAIT_MS });
    }
    await ws.click('#export');
    for (const page of [sse, ws]) {
      await page.waitForFunction(() => document.querySelectorAll('#notifications li').length === 2, null, { timeout: WAIT_MS });
    }

    // Herald on another origin: herald.js from there (CORS), its stream and inbox counts too.
    const other = await signIn(browser, `${crossOrigin}/`, 'alice');
    assert.equal(await other.evaluate(() => window.herald.transport), 'sse');
    await other.waitForFunction(() => document.getElementById('unread').textContent === '2', null, { timeout: WAIT_MS });
    await other.click('#export');
    await other.waitForSelector('#notifications li[data-type="export.ready"]', { timeout: WAIT_MS });
    await sse.waitForFunction(() => document.querySelectorAll('#notifications li').length === 3, null, { timeout: WAIT_MS });

    // The publisher API is the backend's: not offered on the public origin.
    const publish = await fetch(`${nginx.url}/herald/v1/notify`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ to: { user: 'alice' } }),
    });
    assert.equal(publish.status, 404);
    assert.equal((await publish.json()).error.code, 'not_found');

    // Herald's service worker, at the origin's root (where herald.push looks for it).
    const worker = await fetch(`${nginx.url}/herald-sw.js`);
    assert.equal(worker.status, 200);
    assert.equal(worker.headers.get('content-type'), 'text/javascript; charset=utf-8');
    assert.match(await worker.text(), /self\.heraldNotificationClick = /);

    // Sign-out closes this sign-in's stream (the page goes back to the sign-in form); the other
    // sign-in keeps its own.
    const presence = async () => (await (await fetch(`${herald.url}/v1/users/alice/presence`, {
      headers: { authorization: `Bearer ${API_KEY}` },
    })).json()).sessions.length;
    assert.equal(await presence(), 3);
    await sse.click('text=Sign out');
    await sse.waitForSelector('#sign-in:not([hidden])', { timeout: WAIT_MS });
    await until(async () => (await presence()) === 2, () => 'two sessions of alice left');
    assert.equal(await ws.evaluate(() => window.herald.status), 'open');
  } catch (error) {
    console.log(`== the app's output\n${app.output.text}\n== the other app's\n${crossOriginApp.output.text}\n== nginx's error log\n${nginx.errorLog()}`);
    throw error;
  }
});
