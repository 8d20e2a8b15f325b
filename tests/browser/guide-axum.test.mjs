// docs/guides/axum.md, run: the axum example (crates/herald-server/examples/axum_app, Herald
// embedded with `Herald::builder` and mounted under `/herald`), as a real process on a free port.
// In Chromium a user signs in, the page loads /herald/herald.js and a token from the app, and a
// notification sent by the app's background job (through Herald's notifier, in-process) shows in
// the page, over SSE in one browser profile and WebSocket in another. Signing out closes that
// session; SIGTERM stops the app cleanly. And the guide quotes the example's files exactly.
//
// The example is built by scripts/browser-tests.sh (`cargo build -p herald-server --example
// axum_app`; `cargo test` builds it too) and found as $HERALD_AXUM_APP or
// <target>/debug/examples/axum_app.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ROOT, WAIT_MS, launchBrowser, until } from './lib.mjs';
import { API_KEY, SECRET, checkQuotes, signIn, startApp } from './apps.mjs';

const cleanup = [];
after(async () => {
  for (const step of cleanup.reverse()) await step().catch((error) => console.error(error));
});

function exampleBinary() {
  if (process.env.HERALD_AXUM_APP) return process.env.HERALD_AXUM_APP;
  const path = join(process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target'), 'debug', 'examples', 'axum_app');
  if (!existsSync(path)) throw new Error(`no ${path}: run \`cargo build -p herald-server --example axum_app\` first (or set HERALD_AXUM_APP)`);
  return path;
}

test('the axum guide quotes the example exactly', () => {
  assert.ok(checkQuotes('docs/guides/axum.md') >= 4);
});

test('the axum guide: Herald embedded, a job of the app notifies, the page shows it', { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'herald-guide-axum-'));
  cleanup.push(async () => rmSync(dir, { recursive: true, force: true }));
  const app = await startApp('the axum example', exampleBinary(), [], {
    env: {
      HERALD_SECRET: SECRET,
      HERALD_API_KEY: API_KEY,
      AXUM_APP_LISTEN: '127.0.0.1:0',
      AXUM_APP_DB: join(dir, 'app.db'),
      EXPORT_DELAY_MS: '200',
      RUST_LOG: 'warn',
    },
  });
  cleanup.push(() => app.stop());
  const browser = await launchBrowser();
  cleanup.push(() => browser.close());

  try {
    const sse = await signIn(browser, `${app.url}/`, 'alice');
    const ws = await signIn(browser, `${app.url}/?transport=ws`, 'alice');
    assert.equal(await sse.evaluate(() => window.herald.transport), 'sse');
    assert.equal(await ws.evaluate(() => window.herald.transport), 'ws');

    await sse.click('#export');
    for (const page of [sse, ws]) {
      await page.waitForSelector('#notifications li[data-type="export.ready"]', { timeout: WAIT_MS });
      assert.equal(await page.textContent('#notifications li'), 'Your export is ready');
      await page.waitForFunction(() => document.getElementById('unread').textContent === '1', null, { timeout: WAIT_MS });
    }

    // Herald's publisher API is there too, under /herald, for other services (API key).
    const presence = async () => (await (await fetch(`${app.url}/herald/v1/users/alice/presence`, {
      headers: { authorization: `Bearer ${API_KEY}` },
    })).json()).sessions.length;
    assert.equal(await presence(), 2);
    await sse.click('text=Sign out');
    await sse.waitForSelector('#sign-in:not([hidden])', { timeout: WAIT_MS });
    await until(async () => (await presence()) === 1, () => 'one session of alice left');
    assert.equal(await ws.evaluate(() => window.herald.status), 'open');

    // SIGTERM: the streams end (`closed: shutdown`), and the app exits 0.
    assert.deepEqual(await app.stop(), { code: 0, signal: null });
    await ws.waitForFunction(() => window.herald.status !== 'open', null, { timeout: WAIT_MS });
  } catch (error) {
    console.log(`== the app's output\n${app.output.text}`);
    throw error;
  }
});
