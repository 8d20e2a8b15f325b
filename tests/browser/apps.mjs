// Processes the guides' tests start: `herald serve --memory` with known credentials, and an app
// (the guides' examples) that prints `listening on http://ADDR` once it serves. Each on a free
// 127.0.0.1 port, stopped by its PID. And the check that a guide quotes its example's files
// exactly.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import assert from 'node:assert/strict';

import { ROOT, WAIT_MS, freePort, heraldBinary } from './lib.mjs';

export const SECRET = 'guide-test-secret-of-32-bytes-or-more';
export const API_KEY = 'hk_guide_test';

/** `herald serve --memory` on a free port with SECRET and API_KEY; `url`, `port`, `stop()`. */
export async function startHeraldMemory({ env = {} } = {}) {
  const port = await freePort();
  const herald = await startProcess('herald serve', heraldBinary(), ['serve', '--memory', '--listen', `127.0.0.1:${port}`], {
    env: { RUST_LOG: 'warn', HERALD_SECRET: SECRET, HERALD_API_KEY: API_KEY,
      // Not the admin port's default (127.0.0.1:7301): several servers may run at once.
      HERALD_ADMIN_LISTEN: '127.0.0.1:0', ...env },
    ready: async () => {
      try {
        return (await fetch(`http://127.0.0.1:${port}/healthz`)).ok;
      } catch {
        return false;
      }
    },
  });
  herald.port = port;
  herald.url = `http://127.0.0.1:${port}`;
  return herald;
}

/** An app that prints `listening on http://ADDR`: resolves once it did, with `url` = that. */
export async function startApp(name, command, args, { env = {}, cwd } = {}) {
  let url = null;
  const app = await startProcess(name, command, args, {
    env,
    cwd,
    onStdout: (text) => {
      url ??= /listening on (http:\/\/\S+)/.exec(text)?.[1] ?? null;
    },
    ready: async () => url !== null,
  });
  app.url = url;
  return app;
}

async function startProcess(name, command, args, { env, cwd, onStdout = () => {}, ready }) {
  const child = spawn(command, args, {
    cwd,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = { text: '' };
  child.stdout.on('data', (chunk) => { output.text += chunk; onStdout(output.text); });
  child.stderr.on('data', (chunk) => { output.text += chunk; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const gone = await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 100).unref()).then(() => null)]);
    if (gone) throw new Error(`${name} exited (${JSON.stringify(gone)}):\n${output.text}`);
    if (await ready()) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${name} did not start within ${WAIT_MS} ms:\n${output.text}`);
    }
  }
  return {
    output,
    /** SIGTERM by PID, then SIGKILL after 15 s; resolves to how it exited. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const stopped = await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 15_000).unref()).then(() => null)]);
      if (stopped) return stopped;
      child.kill('SIGKILL');
      await exited;
      throw new Error(`${name} did not stop within 15 s of SIGTERM:\n${output.text}`);
    },
  };
}

/**
 * Checks that every code block of the guide that follows a `<!-- quote: PATH -->` line is, line
 * for line, a part of that file of the repository: the guide shows the code its test runs.
 * Returns how many blocks it checked.
 */
export function checkQuotes(guide) {
  const text = readFileSync(join(ROOT, guide), 'utf8');
  const quote = /<!-- quote: (\S+) -->\n```[a-z]*\n([\s\S]*?)\n```/g;
  let checked = 0;
  for (const [, path, block] of text.matchAll(quote)) {
    const file = readFileSync(join(ROOT, path), 'utf8');
    assert.ok(file.includes(block), `${guide}: a block quoted from ${path} is not in it:\n${block}`);
    checked += 1;
  }
  const markers = text.match(/<!-- quote: /g)?.length ?? 0;
  assert.equal(checked, markers, `${guide}: each \`<!-- quote: PATH -->\` is followed by a code block`);
  return checked;
}

/**
 * The guides' pages: a new browser profile opens `url`, signs in as `user` with the page's
 * sign-in form, opens `url` again (the sign-in may land elsewhere) and waits until its Herald
 * connection is open (`#status`).
 */
export async function signIn(browser, url, user) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`[page error] ${error.message}`));
  await page.goto(url);
  await page.fill('#sign-in input[name=user]', user);
  await page.click('#sign-in button');
  await page.waitForSelector('#app:not([hidden])', { timeout: WAIT_MS });
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('status').textContent === 'open', null, { timeout: WAIT_MS });
  return page;
}
