// A rolling restart behind nginx: three `herald serve` nodes on one PostgreSQL database with NATS
// between them, nginx in front of them with deploy/nginx/herald.conf (the file operators use,
// only its addresses and log directory changed), and herald.js tabs in Chromium that reach
// Herald only through nginx (the page, /herald.js, the streams, the polls). A publisher sends
// steadily through nginx too, so its publishes land on every node. Each node in turn is stopped
// with SIGTERM, waited for, started again and waited for until its /healthz says ok.
//
// Then every tab must have received exactly the acknowledged notifications of its user: none
// lost, none twice, in seq order; and on the wire (EventSource, WebSocket and fetch are wrapped
// in each page to see what herald.js is given, before it drops seqs it has seen) no seq came
// twice and every stream that ended was told why (`closed: shutdown`). The timings are printed:
// how long each node took to stop and to start, how long each tab was without a connection.
//
// Needs HERALD_TEST_POSTGRES (an admin URL: the test creates `herald_browser_<pid>` and drops it)
// and HERALD_TEST_NATS; without them it says why and skips. nginx must be installed
// (scripts/browser-tests.sh installs it); it runs as a private instance in a temp dir, stopped by
// its PID.
//
// Knobs, for longer or harsher runs (defaults are what CI runs): HERALD_CLUSTER_ROUNDS (rolling
// restarts one after the other, 1), HERALD_CLUSTER_RATE (publishes/s, 20),
// HERALD_CLUSTER_SETTLE_MS (steady publishing between two nodes, 6000), HERALD_CLUSTER_SIGNAL
// (SIGTERM; SIGKILL to crash the nodes instead). node's --test-timeout must cover more rounds.

import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { Nginx } from './nginx.mjs';
import { ROOT, WAIT_MS, delay, freePort, heraldBinary, launchBrowser, mintToken, newContext, startHerald, until } from './lib.mjs';

const POSTGRES = process.env.HERALD_TEST_POSTGRES || null;
const NATS = process.env.HERALD_TEST_NATS || null;
const SKIP = !POSTGRES ? 'HERALD_TEST_POSTGRES is not set' : !NATS ? 'HERALD_TEST_NATS is not set' : null;
if (SKIP) console.log(`cluster.test.mjs: skipped: ${SKIP} (CI sets it; e.g. postgres://postgres@127.0.0.1:5432/test and nats://127.0.0.1:4222)`);

const NGINX_CONF = join(ROOT, 'deploy', 'nginx', 'herald.conf');
const SECRET = 'browser-cluster-test-secret-of-at-least-32-bytes';
const API_KEY = 'browser-cluster-test-api-key';
const NODES = 3;
/** Publishes per second, through nginx, round robin over the users. */
const PUBLISH_RATE = Number(process.env.HERALD_CLUSTER_RATE ?? 20);
/** Publishes waiting for their answer at once; past it the publisher falls behind its rate. */
const PUBLISHES_IN_FLIGHT_MAX = 100;
/** A publish is retried (same idempotency key) on a failure that may be the proxy's, this long. */
const PUBLISH_RETRY_MS = 60_000;
/**
 * Steady publishing before the first node is stopped, between nodes (after the tabs are back),
 * and after the last. More than nginx's `fail_timeout` (5 s in herald.conf): a node that failed
 * is not sent requests again for that long, so stopping the next one sooner can leave nginx
 * with no node it believes live (502 `no live upstreams`), as docs/OPERATIONS.md says.
 */
const SETTLE_MS = Number(process.env.HERALD_CLUSTER_SETTLE_MS ?? 6_000);
/** Rolling restarts, one after the other. */
const ROUNDS = Number(process.env.HERALD_CLUSTER_ROUNDS ?? 1);
/**
 * How a node is stopped: SIGTERM (a restart, which the test is about), or SIGKILL to see a crash
 * (`HERALD_CLUSTER_SIGNAL=SIGKILL`: then streams end without `closed`, and the node exits by the
 * signal).
 */
const SIGNAL = process.env.HERALD_CLUSTER_SIGNAL ?? 'SIGTERM';
/** The tabs: one browser context (one session) per user, a tab per transport. */
const TABS = [
  { user: 'alice', transport: 'sse' },
  { user: 'alice', transport: 'ws' },
  { user: 'alice', transport: 'poll' },
  { user: 'bob', transport: 'sse' },
  { user: 'bob', transport: 'ws' },
  { user: 'carol', transport: 'sse' },
  { user: 'carol', transport: 'ws' },
];
const USERS = [...new Set(TABS.map((t) => t.user))];

let browser;
before(async () => { if (!SKIP) browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

test('a rolling restart of 3 nodes behind nginx loses and duplicates nothing', { skip: SKIP ?? false, timeout: 120_000 + ROUNDS * 50_000 }, async (t) => {
  // Undone last to first when the test ends, whatever happened; on a failure the nodes' and
  // nginx's logs are printed first.
  const cleanup = [];
  let finished = false;
  t.after(async () => {
    if (!finished) printLogs(nodes, nginx);
    for (const step of cleanup.reverse()) await Promise.resolve().then(step).catch((error) => console.error(`cleanup: ${error.message}`));
  });
  let nodes = [];
  let nginx = null;
  const database = createDatabase(POSTGRES);
  cleanup.push(() => dropDatabase(POSTGRES, database.name));
  const cluster = `browser${process.pid}x${Date.now() % 100_000}`;
  const work = mkdtempSync(join(tmpdir(), 'herald-cluster-'));
  cleanup.push(() => rmSync(work, { recursive: true, force: true }));

  for (let k = 1; k <= NODES; k++) {
    nodes.push(new HeraldNode({ k, port: await freePort(), dir: join(work, `n${k}`), store: database.url, bus: NATS, cluster }));
  }
  cleanup.push(() => Promise.all(nodes.map((node) => node.kill())));
  await Promise.all(nodes.map((node) => node.start()));

  nginx = await startNginx({ dir: join(work, 'nginx'), upstreams: nodes.map((n) => n.port) });
  cleanup.push(() => nginx.stop());

  // The tabs, every one through nginx.
  const front = { url: nginx.url, token: (claims) => mintToken(SECRET, claims) };
  const contexts = new Map();
  for (const user of USERS) {
    const context = await newContext(browser, front);
    await context.addInitScript(recordTheWire);
    contexts.set(user, context);
    cleanup.push(() => context.close());
  }
  const tabs = [];
  for (const spec of TABS) {
    const page = await contexts.get(spec.user).newPage();
    page.on('pageerror', (error) => console.error(`[page error] ${spec.user}/${spec.transport}: ${error.message}`));
    await startHerald(page, front, { user: spec.user, session: 'laptop', transport: spec.transport, fallback: false });
    await page.evaluate(() => {
      window.timeline = [{ status: window.herald.status, at: Date.now() }];
      window.received = [];
      window.herald.on('status', (status) => window.timeline.push({ status, at: Date.now() }));
      window.herald.on('notification', (n) => window.received.push({ seq: n.seq, at: Date.now(), sent: n.data?.sent }));
    });
    tabs.push({ ...spec, page, name: `${spec.user}/${spec.transport}` });
  }

  const publisher = new Publisher(nginx.url, USERS);
  publisher.start();
  cleanup.push(() => publisher.stop());
  await delay(SETTLE_MS);

  // The rolling restart.
  const restarts = [];
  for (const node of Array.from({ length: ROUNDS }, () => nodes).flat()) {
    const sigtermAt = Date.now();
    const exit = await node.stop(SIGNAL);
    const exitedAt = Date.now();
    await node.start();
    const healthyAt = Date.now();
    restarts.push({ node: node.id, exit, stopMs: exitedAt - sigtermAt, startMs: healthyAt - exitedAt });
    const expected = SIGNAL === 'SIGTERM' ? { code: 0, signal: null } : { code: null, signal: SIGNAL };
    assert.deepEqual(exit, expected, `${node.id} exits ${JSON.stringify(expected)} after ${SIGNAL}:\n${node.stderr}`);
    await waitAllOpen(tabs);
    await delay(SETTLE_MS);
  }

  await publisher.stop();
  const acknowledged = publisher.acknowledged();
  const last = new Map([...acknowledged].map(([user, list]) => [user, list.at(-1)?.seq ?? 0]));

  // Every tab catches up with the last acknowledged seq of its user, then a moment more for any
  // late duplicate.
  for (const tab of tabs) {
    await until(
      () => tab.page.evaluate((seq) => window.received.some((n) => n.seq === seq), last.get(tab.user)),
      () => `${tab.name} to receive seq ${last.get(tab.user)}`,
      30_000,
    );
  }
  await delay(1_000);

  const results = [];
  for (const tab of tabs) {
    const seen = await tab.page.evaluate(() => ({
      received: window.received, timeline: window.timeline, wire: window.heraldWire, recorded: window.recorded,
    }));
    results.push({ tab, ...seen });
  }

  // Each node's view of the cluster: peers, and what its bus carried and repaired.
  const views = await Promise.all(nodes.map(async (node) => {
    const response = await fetch(`${node.url}/v1/cluster`, { headers: { authorization: `Bearer ${API_KEY}` } });
    return response.ok ? response.json() : { node: node.id, status: response.status };
  }));
  report({ restarts, publisher, results, nginx, nodes, views });

  for (const { tab, received, wire, recorded } of results) {
    // First: a tab that stopped or was reset explains any seq it misses.
    assert.deepEqual(recorded.closed, [], `${tab.name} never stopped`);
    assert.deepEqual(recorded.resets, [], `${tab.name} had no reset`);
    const expected = acknowledged.get(tab.user).map((a) => a.seq);
    const got = received.map((n) => n.seq);
    if (JSON.stringify(got) !== JSON.stringify(expected)) {
      const at = got.findIndex((seq, i) => seq !== expected[i]);
      const around = new Set([got[at - 1], got[at], expected[at]]);
      const nearby = wire.connections
        .map((c, i) => ({ i, ...c, seqs: `${c.seqs[0] ?? '-'}..${c.seqs.at(-1) ?? '-'} (${c.seqs.length})`, has: c.seqs.some((s) => around.has(s)) }))
        .filter((c, _, all) => all.some((d) => d.has && Math.abs(d.i - c.i) <= 3));
      console.log(`${tab.name}: first difference at index ${at} (got ${got[at]}, expected ${expected[at]}); the wire nearby:\n${nearby.map((c) => `  ${JSON.stringify(c)}`).join('\n')}`);
    }
    assert.deepEqual(got, expected, `${tab.name}: exactly the acknowledged seqs of ${tab.user}, in order`);
    const keys = new Map(acknowledged.get(tab.user).map((a) => [a.seq, a.i]));
    const data = recorded.notifications.map((n) => [n.seq, n.data?.i]);
    assert.deepEqual(data, data.map(([seq]) => [seq, keys.get(seq)]), `${tab.name}: each seq holds its own publish`);
    const onWire = wire.connections.flatMap((c) => c.seqs);
    assert.deepEqual(duplicates(onWire), [], `${tab.name}: no seq came twice on the wire`);
    for (const c of wire.connections) {
      if (c.hello === null || c.endedAt === null) continue; // never opened, or still open
      if (SIGNAL !== 'SIGTERM') continue; // a killed node tells nobody
      assert.equal(c.closed, 'shutdown', `${tab.name}: a ${c.transport} connection that ended was told why: ${JSON.stringify(c)}`);
    }
  }
  for (const node of nodes) assert.doesNotMatch(node.stderr, /panicked/, `${node.id} did not panic`);
  finished = true;
});

/** After a failure: the end of each node's stderr and of nginx's error log. */
function printLogs(nodes, nginx) {
  const tail = (text, lines = 30) => text.split('\n').slice(-lines).map((line) => `  ${line}`).join('\n');
  for (const node of nodes) console.log(`== ${node.id}'s stderr (end)\n${tail(node.stderr)}`);
  if (nginx) {
    let log = '';
    try { log = readFileSync(join(nginx.dir, 'error.log'), 'utf8'); } catch { /* not written */ }
    console.log(`== nginx's error log (end)\n${tail(log)}`);
  }
}

/** A `herald serve` node of the cluster, on its own port; started again on the same port. */
class HeraldNode {
  constructor({ k, port, dir, store, bus, cluster }) {
    Object.assign(this, { id: `n${k}`, port, dir, store, bus, cluster });
    this.child = null;
    this.exited = null;
    this.stderr = '';
    mkdirSync(dir, { recursive: true });
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    this.child = spawn(heraldBinary(), [
      'serve', '--listen', `127.0.0.1:${this.port}`,
      '--store', this.store, '--bus', this.bus, '--node-id', this.id, '--cluster', this.cluster,
      // nginx is on this machine: the caps count the browser's address from X-Forwarded-For.
      '--trusted-proxies', '127.0.0.1',
    ], {
      cwd: this.dir,
      env: { PATH: process.env.PATH, RUST_LOG: process.env.RUST_LOG ?? 'warn', HERALD_SECRET: SECRET, HERALD_API_KEY: API_KEY,
        // Three nodes on one host: each admin port on a free port, not the default 7301.
        HERALD_ADMIN_LISTEN: '127.0.0.1:0' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const child = this.child;
    child.stderr.on('data', (chunk) => { this.stderr += chunk; });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      const gone = await Promise.race([this.exited, idle(100).then(() => null)]);
      if (gone) throw new Error(`${this.id} exited (${JSON.stringify(gone)}):\n${this.stderr}`);
      let health = null;
      try {
        const response = await fetch(`${this.url}/healthz`);
        health = await response.json();
        // 200 even while the store or the bus cannot be reached: then `"status": "degraded"`.
        if (response.ok && health.status === 'ok') return;
      } catch { /* not listening yet */ }
      if (Date.now() > deadline) {
        throw new Error(`${this.id}'s /healthz did not say ok within ${WAIT_MS} ms (${JSON.stringify(health)}):\n${this.stderr}`);
      }
    }
  }

  /** `signal` (SIGTERM), then waits for the exit (15 s at most); returns `{code, signal}`. */
  async stop(signal = 'SIGTERM') {
    this.child.kill(signal);
    const exit = await Promise.race([this.exited, idle(15_000).then(() => null)]);
    if (!exit) {
      this.child.kill('SIGKILL');
      await this.exited;
      throw new Error(`${this.id} did not exit within 15 s of SIGTERM:\n${this.stderr}`);
    }
    return exit;
  }

  async kill() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGKILL');
      await this.exited;
    }
  }
}

/**
 * A private nginx (tests/browser/nginx.mjs) running deploy/nginx/herald.conf, the file operators
 * use, with its addresses replaced: each `server 127.0.0.1:730N` of the upstream by a node's
 * port, `listen 127.0.0.1:7300` by a free port, and the access log's `/var/log/nginx/` by `dir`
 * (each found exactly once, else the test fails rather than run another configuration).
 */
async function startNginx({ dir, upstreams }) {
  assert.equal(upstreams.length, 3, 'herald.conf has three upstream servers');
  const port = await freePort();
  return Nginx.start({
    dir,
    conf: NGINX_CONF,
    port,
    probe: '/healthz',
    replacements: [
      [/^(\s*listen )127\.0\.0\.1:7300;/, `$1127.0.0.1:${port};`],
      ...upstreams.map((upstream, i) => [new RegExp(`^(\\s*server )127\\.0\\.0\\.1:730${i + 1} `), `$1127.0.0.1:${upstream} `]),
      [/^(\s*access_log )\/var\/log\/nginx\//, `$1${dir}/`],
    ],
  });
}

/** nginx's access log: each request's method, path, status and which node served it. */
function accessLog(nginx) {
  const lines = readFileSync(join(nginx.dir, 'herald.access.log'), 'utf8').split('\n').filter(Boolean);
  return lines.map((line) => {
    const [, method, path, status, node] = /"(\S+) (\S+) [^"]*" (\d+) .* node=(.*)$/.exec(line) ?? [];
    return { method, path, status: Number(status), node };
  });
}

/**
 * Publishes `PUBLISH_RATE` times a second through nginx, round robin over `users`, each with an
 * idempotency key, and retries one (same key) when it failed in a way that says nothing about
 * whether it was stored: no answer, or the proxy's 502/503/504. A publish is acknowledged when
 * it got its 200; anything else fails the test.
 */
class Publisher {
  constructor(url, users) {
    Object.assign(this, { url, users });
    this.sent = 0;
    this.results = []; // {i, user, seq, firstAt, ackAt, attempts, failures}
    this.inFlight = new Set();
    this.running = null;
    this.stopping = false;
    this.failure = null;
  }

  start() {
    this.running = (async () => {
      const started = Date.now();
      while (!this.stopping && !this.failure) {
        const due = started + (this.sent * 1000) / PUBLISH_RATE;
        if (Date.now() < due) await delay(due - Date.now());
        if (this.inFlight.size >= PUBLISHES_IN_FLIGHT_MAX) {
          await Promise.race(this.inFlight);
          continue;
        }
        const i = this.sent++;
        const publish = this.#publish(i).catch((error) => { this.failure ??= error; });
        this.inFlight.add(publish);
        publish.finally(() => this.inFlight.delete(publish));
      }
      await Promise.all(this.inFlight);
    })();
  }

  async stop() {
    this.stopping = true;
    await this.running;
    if (this.failure) throw this.failure;
  }

  async #publish(i) {
    const user = this.users[i % this.users.length];
    const firstAt = Date.now();
    const failures = [];
    for (let attempts = 1; ; attempts++) {
      let status = null;
      let answer = null;
      try {
        const response = await fetch(`${this.url}/v1/notify`, {
          method: 'POST',
          headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
          body: JSON.stringify({ to: { user }, type: 'rolling', data: { i, sent: Date.now() }, idempotency_key: `rolling-${i}` }),
          signal: AbortSignal.timeout(15_000),
        });
        status = response.status;
        answer = await response.text();
      } catch (error) {
        failures.push(String(error.cause?.code ?? error.name ?? error));
      }
      if (status === 200) {
        const seq = JSON.parse(answer).notifications[0].seq;
        this.results.push({ i, user, seq, firstAt, ackAt: Date.now(), attempts, failures });
        return;
      }
      if (status !== null) {
        failures.push(status);
        if (![502, 503, 504].includes(status)) throw new Error(`publish ${i} answered ${status}: ${answer}`);
      }
      if (Date.now() - firstAt > PUBLISH_RETRY_MS) throw new Error(`publish ${i} failed for ${PUBLISH_RETRY_MS} ms: ${failures}`);
      await delay(200);
    }
  }

  /** user → the acknowledged publishes, by seq. */
  acknowledged() {
    const byUser = new Map(this.users.map((user) => [user, []]));
    for (const result of this.results) byUser.get(result.user).push(result);
    for (const list of byUser.values()) list.sort((a, b) => a.seq - b.seq);
    return byUser;
  }
}

/**
 * Runs in every page before herald.js: wraps EventSource, WebSocket and fetch (for /v1/poll) to
 * record each connection as the server sent it, in `window.heraldWire.connections`: transport,
 * when it started, said hello and ended, the seqs it carried, and the `closed` reason if any.
 * herald.js hands a seq to the app once, whatever the wire did; this sees the wire.
 */
function recordTheWire() {
  const wire = { connections: [] };
  window.heraldWire = wire;
  const connection = (transport) => {
    const c = { transport, startedAt: Date.now(), hello: null, endedAt: null, seqs: [], closed: null };
    wire.connections.push(c);
    return c;
  };
  const onEvent = (c, event, data) => {
    if (event === 'hello') c.hello = Date.now();
    if (event === 'notification' && typeof data?.seq === 'number') c.seqs.push(data.seq);
    if (event === 'closed') c.closed = data?.reason ?? null;
  };
  const parse = (text) => { try { return JSON.parse(text); } catch { return null; } };

  const NativeEventSource = window.EventSource;
  window.EventSource = class extends NativeEventSource {
    constructor(...args) {
      super(...args);
      const c = connection('sse');
      for (const name of ['hello', 'notification', 'closed']) {
        this.addEventListener(name, (message) => onEvent(c, name, parse(message.data)));
      }
      this.addEventListener('error', () => { c.endedAt ??= Date.now(); });
      const close = this.close.bind(this);
      this.close = () => { c.endedAt ??= Date.now(); close(); };
    }
  };

  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      const c = connection('ws');
      this.addEventListener('message', (message) => {
        const data = parse(message.data);
        onEvent(c, data?.event, data);
      });
      this.addEventListener('close', () => { c.endedAt ??= Date.now(); });
    }
  };

  const nativeFetch = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const response = await nativeFetch(input, init);
    if (String(input).includes('/v1/poll')) {
      const c = connection('poll');
      c.status = response.status;
      const query = new URL(String(input), location.href).searchParams;
      c.after = query.get('after');
      c.client = query.get('client');
      const body = parse(await response.clone().text());
      c.lastSeq = body?.last_seq ?? null;
      c.reset = body?.reset ?? false;
      if (response.ok) c.hello = Date.now();
      for (const n of body?.notifications ?? []) onEvent(c, 'notification', n);
      c.closed = body?.closed ?? null;
      c.endedAt = Date.now();
      // A poll answer is a whole connection's worth: it "ended" unless the server closed the
      // client; only a `closed` it carried is checked.
      if (c.closed === null) c.endedAt = null;
    }
    return response;
  };
}

/** Waits until every tab's herald.js says `open`; says what the tab went through if one does not. */
async function waitAllOpen(tabs) {
  for (const tab of tabs) {
    try {
      // herald.js's back-off reaches 30 s after several short-lived connections in a row.
      await until(() => tab.page.evaluate(() => window.herald.status === 'open'), () => `${tab.name} to be open again`, 45_000);
    } catch (error) {
      const state = await tab.page.evaluate(() => ({
        timeline: window.timeline.slice(-10), connections: window.heraldWire.connections.slice(-6).map(({ seqs, ...c }) => ({ ...c, seqs: seqs.length })),
      }));
      throw new Error(`${error.message}: ${JSON.stringify(state)}`, { cause: error });
    }
  }
}

/** Like `delay`, but does not keep the process alive (for the losing side of a race). */
function idle(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function duplicates(seqs) {
  const seen = new Set();
  return seqs.filter((seq) => (seen.has(seq) ? true : (seen.add(seq), false)));
}

/** Prints what happened: the restarts, the publishes, each tab's time without a connection. */
function report({ restarts, publisher, results, nginx, nodes, views }) {
  const lines = ['', `== rolling restart behind nginx (${SIGNAL}, ${ROUNDS} round${ROUNDS > 1 ? 's' : ''}, ${SETTLE_MS} ms between nodes)`];
  for (const r of restarts) {
    lines.push(`${r.node}: ${SIGNAL} → exit ${JSON.stringify(r.exit)} in ${r.stopMs} ms; start → /healthz ok in ${r.startMs} ms`);
  }
  const acks = publisher.results;
  const retried = acks.filter((a) => a.attempts > 1);
  const latencies = acks.map((a) => a.ackAt - a.firstAt).sort((a, b) => a - b);
  const failures = {};
  for (const a of acks) for (const f of a.failures) failures[f] = (failures[f] ?? 0) + 1;
  lines.push(`publishes: ${acks.length} acknowledged (${PUBLISH_RATE}/s), ${retried.length} needed a retry; failed attempts: ${JSON.stringify(failures)}; `
    + `ack latency p50 ${percentile(latencies, 0.5)} ms, p99 ${percentile(latencies, 0.99)} ms, max ${latencies.at(-1)} ms`);
  const log = accessLog(nginx);
  const perNode = (filter) => {
    const counts = {};
    for (const entry of log.filter(filter)) {
      const node = nodes.find((n) => entry.node.endsWith(`:${n.port}`))?.id ?? entry.node;
      counts[node] = (counts[node] ?? 0) + 1;
    }
    return JSON.stringify(counts);
  };
  lines.push(`nginx: publishes per node (last upstream tried): ${perNode((e) => e.path === '/v1/notify' && e.status === 200)}; `
    + `ended streams and WebSockets per node: ${perNode((e) => e.path === '/v1/stream' || e.path === '/v1/ws')}; `
    + `answers ≥ 500: ${log.filter((e) => e.status >= 500).length}`);
  for (const { tab, timeline, received, wire } of results) {
    const gaps = offline(timeline);
    const latency = received.filter((n) => n.sent).map((n) => n.at - n.sent).sort((a, b) => a - b);
    const failed = wire.connections.filter((c) => c.hello === null && c.transport !== 'poll').length;
    const told = wire.connections.filter((c) => c.closed !== null).map((c) => c.closed);
    // Each stream that followed an ended one: the wait before it (herald.js's back-off), and
    // from its start to its `hello` (through nginx to a node, replay included).
    const streams = wire.connections.filter((c) => c.transport !== 'poll');
    const steps = streams.slice(1).map((c, i) => `${c.startedAt - (streams[i].endedAt ?? c.startedAt)}+${c.hello === null ? '∞' : c.hello - c.startedAt}`);
    lines.push(`${tab.name.padEnd(11)} ${received.length} received; without a connection ${gaps.length}× `
      + `(${gaps.map((g) => `${g} ms`).join(', ') || '-'}${steps.length ? `; wait+connect ${steps.join(', ')} ms` : ''}); connections ${wire.connections.filter((c) => c.transport !== 'poll').length || '(polls)'}, `
      + `failed before hello ${failed}, told \`closed\` ${JSON.stringify(told)}; delivery latency p50 ${percentile(latency, 0.5)} ms, max ${latency.at(-1)} ms`);
  }
  for (const view of views) {
    const { node, peers, envelopes_out: out, envelopes_in: into, echoes, rejected, publish_failures: failures, repair_passes: passes, repaired } = view;
    lines.push(`${node}: peers ${JSON.stringify(peers)}; since its last start: envelopes out ${out}, in ${into}, echoes ${echoes}, rejected ${rejected}, publish failures ${failures}, repair passes ${passes}, repaired ${repaired}`);
  }
  for (const node of nodes) {
    const notes = node.stderr.split('\n').filter((line) => / (WARN|ERROR) /.test(line));
    if (notes.length) lines.push(`${node.id}'s warnings and errors (${notes.length}):`, ...notes.slice(0, 10).map((line) => `  ${line}`));
  }
  console.log(lines.join('\n'));
}

/** The lengths of the periods the tab was not `open`, after it first was. */
function offline(timeline) {
  const gaps = [];
  let since = null;
  let opened = false;
  for (const { status, at } of timeline) {
    if (status === 'open') {
      if (since !== null) gaps.push(at - since);
      since = null;
      opened = true;
    } else if (opened && since === null) {
      since = at;
    }
  }
  return gaps;
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : null;
}

/** A fresh database `herald_browser_<pid>` next to the one in `adminUrl`; with psql. */
function createDatabase(adminUrl) {
  const name = `herald_browser_${process.pid}`;
  psql(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  psql(adminUrl, `CREATE DATABASE ${name}`);
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return { name, url: url.href };
}

function dropDatabase(adminUrl, name) {
  psql(adminUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
}

function psql(url, sql) {
  const result = spawnSync('psql', [url, '-v', 'ON_ERROR_STOP=1', '-q', '-c', sql], { encoding: 'utf8' });
  if (result.error || result.status !== 0) {
    throw new Error(`psql ${JSON.stringify(sql)} failed (is psql installed? scripts/browser-tests.sh installs it): ${result.error ?? result.stderr}`);
  }
}
