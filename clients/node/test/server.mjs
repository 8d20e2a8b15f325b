// A real `herald serve --memory` for the tests: on a free 127.0.0.1 port, with a known secret and
// API key, stopped by its PID. And a subscriber's SSE stream, read with Node's fetch; for Web
// Push, a push service on 127.0.0.1 and a browser's subscription registered as herald.js does.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { HeraldError } from '../src/index.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** Longest wait for anything a test expects (a start, an event). */
export const WAIT_MS = 20_000;

/** The `herald` binary: $HERALD_BIN, else the newest of <target>/{debug,release}/herald. */
export function heraldBinary() {
  if (process.env.HERALD_BIN) return process.env.HERALD_BIN;
  const targetDir = process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target');
  const candidates = ['debug', 'release']
    .map((profile) => join(targetDir, profile, 'herald'))
    .filter((path) => existsSync(path))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (!candidates.length) throw new Error('no herald binary: run `cargo build -p herald` first (or set HERALD_BIN)');
  return candidates[0];
}

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const SECRET = 'a-test-secret-of-32-bytes-or-more!!';
export const API_KEY = 'hk_test_key';

/** A VAPID private key (a P-256 scalar, URL-safe base64, as crates/herald/tests/cli.rs uses). */
export const VAPID_PRIVATE_KEY = 'RS0WdYWWo1HajXg3NZR1olzCf31i-ZBGDkFyCs7j1jw';

/**
 * What `startHerald` takes for Web Push on: a VAPID key, and endpoints on loopback accepted
 * (over http://), so that `startPushService` can stand in for a browser's push service.
 */
export const PUSH_ENV = {
  HERALD_VAPID_PRIVATE_KEY: VAPID_PRIVATE_KEY,
  HERALD_VAPID_SUBJECT: 'mailto:ops@example.com',
  HERALD_PUSH_ALLOW_LOOPBACK: 'true',
};

/** A browser's push keys: RFC 8291's example user agent (a P-256 point and a 16-byte secret). */
export const BROWSER_PUSH_KEYS = {
  p256dh: 'BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM',
  auth: 'tBHItJI5svbpez7KI4CCXg',
};

/**
 * A push service on a free port of 127.0.0.1: answers every POST 201 and keeps its path and
 * headers (the body is encrypted for the browser). `endpoint(name)` is a subscription's URL;
 * `waitFor(count)` resolves to the pushes once there are `count`, failing after WAIT_MS.
 */
export async function startPushService() {
  const received = [];
  const server = createHttpServer((request, response) => {
    request.resume();
    request.on('end', () => {
      received.push({ path: request.url, headers: request.headers });
      response.writeHead(201, { 'content-length': '0' }).end();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${server.address().port}`;
  return {
    url,
    received,
    endpoint: (name) => `${url}/push/${name}`,
    async waitFor(count) {
      const deadline = Date.now() + WAIT_MS;
      while (received.length < count) {
        if (Date.now() > deadline) throw new Error(`${received.length} pushes within ${WAIT_MS} ms, not ${count}`);
        await delay(20);
      }
      return [...received];
    },
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * What herald.js's `herald.push.subscribe()` sends: the browser's subscription, registered with
 * the subscriber token (`POST /v1/push/subscriptions`). Resolves to `{id, created_at}`.
 */
export async function subscribeBrowser(url, token, endpoint) {
  const response = await fetch(`${url}/v1/push/subscriptions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ endpoint, expirationTime: null, keys: BROWSER_PUSH_KEYS }),
  });
  const answer = await response.json();
  if (response.status !== 201) throw new Error(`the subscription was refused: ${response.status} ${JSON.stringify(answer)}`);
  return answer;
}

/** `herald serve --memory` with SECRET and API_KEY (and `env`), once it answers /healthz. */
export async function startHerald({ env = {}, args = [] } = {}) {
  const port = await freePort();
  const child = spawn(heraldBinary(), ['serve', '--memory', '--listen', `127.0.0.1:${port}`, ...args], {
    env: { PATH: process.env.PATH, RUST_LOG: 'warn', HERALD_SECRET: SECRET, HERALD_API_KEY: API_KEY,
      // Not the admin port's default (127.0.0.1:7301): several servers may run at once.
      HERALD_ADMIN_LISTEN: '127.0.0.1:0', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const gone = await Promise.race([exited, delay(100).then(() => null)]);
    if (gone) throw new Error(`herald serve exited (${JSON.stringify(gone)}):\n${stderr}`);
    try {
      if ((await fetch(`${url}/healthz`)).ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`herald serve did not answer /healthz:\n${stderr}`);
    }
  }
  return {
    url,
    port,
    /** Stops it by its PID: SIGTERM, then SIGKILL after 15 s. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const stopped = await Promise.race([exited, delay(15_000).then(() => null)]);
      if (!stopped) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/**
 * A subscriber's SSE stream (`GET /v1/stream`), read with fetch: `next(name)` resolves to the
 * next event of that name (its `data` parsed), failing after WAIT_MS.
 */
export async function openStream(url, token, query = '') {
  const controller = new AbortController();
  const response = await fetch(`${url}/v1/stream?token=${encodeURIComponent(token)}${query}`, { signal: controller.signal });
  const events = [];
  const waiters = [];
  let ended = false;
  if (response.ok) {
    (async () => {
      const decoder = new TextDecoder();
      let buffer = '';
      try {
        for await (const chunk of response.body) {
          buffer += decoder.decode(chunk, { stream: true });
          let end;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const event = { name: 'message', data: '' };
            for (const line of block.split('\n')) {
              if (line.startsWith('event: ')) event.name = line.slice(7);
              else if (line.startsWith('data: ')) event.data += line.slice(6);
            }
            if (block.startsWith(':')) continue;
            events.push({ name: event.name, data: JSON.parse(event.data) });
            waiters.splice(0).forEach((wake) => wake());
          }
        }
      } catch { /* aborted */ }
      ended = true;
      waiters.splice(0).forEach((wake) => wake());
    })();
  }
  let read = 0;
  return {
    status: response.status,
    response,
    async next(name) {
      const deadline = Date.now() + WAIT_MS;
      for (;;) {
        while (read < events.length) {
          const event = events[read++];
          if (event.name === name) return event.data;
        }
        if (ended) throw new Error(`the stream ended before a \`${name}\` event; got ${JSON.stringify(events)}`);
        if (Date.now() > deadline) throw new Error(`no \`${name}\` event within ${WAIT_MS} ms; got ${JSON.stringify(events)}`);
        await new Promise((resolve) => { waiters.push(resolve); setTimeout(resolve, 200).unref(); });
      }
    },
    close() {
      controller.abort();
    },
  };
}

export function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Asserts that `promise` rejects with a HeraldError of this status and code. */
export async function refused(promise, status, code) {
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof HeraldError, `not a HeraldError: ${error}`);
    assert.equal(error.name, 'HeraldError');
    assert.equal(error.status, status, error.message);
    assert.equal(error.code, code, error.message);
    assert.ok(error.message.length > 0);
    return true;
  });
}
