// @herald/server against a real `herald serve --memory`: every method, the errors the server
// answers, the client's own failures (timeout, abort, unreachable, an answer that is not
// Herald's), and the whole path: a token minted here opens a real SSE stream, which then gets
// what this library publishes.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';

import { Herald } from '../src/index.js';
import { API_KEY, SECRET, freePort, openStream, refused, startHerald } from './server.mjs';

let server;
let herald;
const streams = [];

before(async () => {
  server = await startHerald();
  herald = new Herald({ url: server.url, apiKey: API_KEY, secret: SECRET });
});

after(async () => {
  streams.forEach((stream) => stream.close());
  await server?.stop();
});

/** A stream of `user` in `session` with a token minted by the library. */
async function subscribe(user, session, { topics, query = '' } = {}) {
  const stream = await openStream(server.url, herald.mintToken({ user, session, topics }), query);
  streams.push(stream);
  assert.equal(stream.status, 200, `the stream of ${user} was refused: ${stream.status}`);
  return { stream, hello: await stream.next('hello') };
}

describe('tokens', () => {
  test('a token minted by the library opens a real stream, which gets what the library publishes', async () => {
    const { stream, hello } = await subscribe('alice', 'laptop');
    assert.equal(hello.user, 'alice');
    assert.equal(hello.session, 'laptop');
    const receipt = await herald.notify({ user: 'alice', type: 'message.new', data: { text: 'hi', n: 1 } });
    assert.equal(receipt.delivered, 1);
    assert.deepEqual(receipt.notifications, [{ user: 'alice', seq: hello.last_seq + 1 }]);
    const notification = await stream.next('notification');
    assert.equal(notification.seq, hello.last_seq + 1);
    assert.equal(notification.type, 'message.new');
    assert.deepEqual(notification.data, { text: 'hi', n: 1 });
  });

  test('the claims: sub, sid, iat = now, exp = now + ttl, topics, HS256', () => {
    const token = herald.mintToken({ user: 'bob', session: 's1', ttl: 60, topics: ['room:*'] });
    const [header, claims] = token.split('.').slice(0, 2).map((part) => JSON.parse(Buffer.from(part, 'base64url')));
    assert.deepEqual(header, { alg: 'HS256', typ: 'JWT' });
    const now = Math.floor(Date.now() / 1000);
    assert.equal(claims.sub, 'bob');
    assert.equal(claims.sid, 's1');
    assert.ok(Math.abs(claims.iat - now) <= 1);
    assert.equal(claims.exp, claims.iat + 60);
    assert.deepEqual(claims.topics, ['room:*']);
    const defaults = JSON.parse(Buffer.from(herald.mintToken({ user: 'bob' }).split('.')[1], 'base64url'));
    assert.equal(defaults.exp - defaults.iat, 900);
    assert.equal('sid' in defaults, false);
  });

  test('a token signed with another secret is refused by the server', async () => {
    const other = new Herald({ url: server.url, secret: 'another-secret-of-32-bytes-or-more!' });
    const stream = await openStream(server.url, other.mintToken({ user: 'alice' }));
    streams.push(stream);
    assert.equal(stream.status, 401);
    assert.equal((await stream.response.json()).error.code, 'invalid_token');
  });

  test('the topics claim lets the tab listen by itself; without it the server refuses', async () => {
    const { hello } = await subscribe('carol', 'c1', { topics: ['room:*'], query: '&topics=room:1' });
    assert.deepEqual(hello.topics, ['room:1']);
    const refusedStream = await openStream(server.url, herald.mintToken({ user: 'carol' }), '&topics=room:1');
    streams.push(refusedStream);
    assert.equal(refusedStream.status, 403);
    assert.equal((await refusedStream.response.json()).error.code, 'topic_forbidden');
  });

  test('an audience, for a server with --token-audience: required there, refused elsewhere', async () => {
    const strict = await startHerald({ env: { HERALD_TOKEN_AUDIENCE: 'herald.example' } });
    try {
      const withAudience = herald.mintToken({ user: 'alice', audience: 'herald.example' });
      const accepted = await openStream(strict.url, withAudience);
      streams.push(accepted);
      assert.equal(accepted.status, 200);
      assert.equal((await accepted.next('hello')).user, 'alice');
      const without = await openStream(strict.url, herald.mintToken({ user: 'alice' }));
      streams.push(without);
      assert.equal(without.status, 401);
      const elsewhere = await openStream(server.url, withAudience);
      streams.push(elsewhere);
      assert.equal(elsewhere.status, 401);
    } finally {
      streams.forEach((stream) => stream.close());
      await strict.stop();
    }
  });

  test('mistakes throw at once', () => {
    assert.throws(() => herald.mintToken({ user: '' }), TypeError);
    assert.throws(() => herald.mintToken({ user: 'a', ttl: 0 }), TypeError);
    assert.throws(() => herald.mintToken({ user: 'a', ttl: 1.5 }), TypeError);
    assert.throws(() => new Herald({ url: server.url, apiKey: API_KEY }).mintToken({ user: 'a' }), /secret/);
    assert.throws(() => new Herald({ url: 'localhost:7300' }), TypeError);
    assert.throws(() => new Herald({ url: server.url, secret: SECRET }).presence('a'), /apiKey/);
    assert.throws(() => herald.notify({ user: 'a', idempotency_key: 'k' }), /unknown option `idempotency_key`/);
    assert.throws(() => herald.notify({ user: 'a', push_ttl: 60 }), /unknown option `push_ttl`/);
    assert.throws(() => herald.notifyBatch([]), TypeError);
    assert.throws(() => herald.notify({ user: 'a' }, { timeoutMs: 0 }), TypeError);
  });
});

describe('publishing', () => {
  test('targets: users, a session, a client, except a client; ephemeral; idempotency', async () => {
    const a = await subscribe('dave', 'phone');
    const b = await subscribe('dave', 'tablet');
    const e = await subscribe('erin', 'e1');

    const both = await herald.notify({ users: ['dave', 'erin'], type: 'both' });
    assert.deepEqual(both.notifications.map((n) => n.user).sort(), ['dave', 'erin']);
    assert.equal((await a.stream.next('notification')).type, 'both');
    assert.equal((await b.stream.next('notification')).type, 'both');
    assert.equal((await e.stream.next('notification')).type, 'both');

    await herald.notify({ user: 'dave', session: 'tablet', type: 'session-only' });
    await herald.notify({ client: a.hello.client, type: 'client-only' });
    await herald.notify({ user: 'dave', exceptClient: a.hello.client, type: 'not-phone' });
    await herald.notify({ user: 'dave', type: 'everyone' });
    assert.equal((await a.stream.next('notification')).type, 'client-only');
    assert.equal((await a.stream.next('notification')).type, 'everyone');
    assert.equal((await b.stream.next('notification')).type, 'session-only');
    assert.equal((await b.stream.next('notification')).type, 'not-phone');
    assert.equal((await b.stream.next('notification')).type, 'everyone');

    const ephemeral = await herald.notify({ user: 'erin', type: 'typing', durable: false, data: { from: 'dave' } });
    assert.deepEqual(ephemeral.notifications, []);
    const typing = await e.stream.next('notification');
    assert.equal(typing.type, 'typing');
    assert.equal('seq' in typing, false);

    const first = await herald.notify({ user: 'erin', type: 'once', idempotencyKey: 'order-7' });
    const again = await herald.notify({ user: 'erin', type: 'once', idempotencyKey: 'order-7' });
    assert.deepEqual(again.notifications, first.notifications);
    const stored = await herald.notifications('erin');
    assert.equal(stored.notifications.filter((n) => n.type === 'once').length, 1);
  });

  test('a batch: entries stored in order, one failing alone', async () => {
    const answer = await herald.notifyBatch([
      { user: 'frank', type: 'one' },
      { client: 'AAAAAAAAAAAAAAAAAAAAAAAAAAA', type: 'nobody' },
      { user: 'frank', type: 'two', data: [1, 2] },
    ]);
    assert.equal(answer.failed, 1);
    assert.equal(answer.results.length, 3);
    assert.equal(answer.results[1].error.status, 404);
    assert.equal(answer.results[1].error.code, 'client_not_found');
    const [one, , two] = answer.results;
    assert.equal(two.notifications[0].seq, one.notifications[0].seq + 1);
    const stored = await herald.notifications('frank', { after: one.notifications[0].seq, limit: 5 });
    assert.deepEqual(stored.notifications.map((n) => [n.type, n.data]), [['two', [1, 2]]]);
  });

  test('a topic: a user made to follow it by the backend gets its events, but not the author', async () => {
    const g = await subscribe('gina', 'g1');
    const h = await subscribe('hugo', 'h1');
    const listening = await herald.listen({ topics: ['post:42'], user: 'gina' });
    assert.deepEqual(listening, { user: 'gina', topics: ['post:42'], positions: { 'post:42': 0 } });
    await herald.listen({ topics: 'post:42', client: h.hello.client });
    const who = await herald.topic('post:42');
    assert.deepEqual(who.users, ['gina']);
    assert.deepEqual(who.clients.map((c) => c.user).sort(), ['gina', 'hugo']);

    const receipt = await herald.notify({ topic: 'post:42', type: 'comment', data: { by: 'hugo' }, exceptUser: 'hugo' });
    assert.deepEqual(receipt.topic, { topic: 'post:42', tseq: 1 });
    assert.equal(receipt.delivered, 1);
    const event = await g.stream.next('topic');
    assert.deepEqual([event.topic, event.tseq, event.data], ['post:42', 1, { by: 'hugo' }]);

    const unlistened = await herald.unlisten({ topics: ['post:42'], user: 'gina' });
    assert.deepEqual(unlistened.topics, []);
    await herald.unlisten({ topics: ['post:42'], client: h.hello.client });
    assert.deepEqual((await herald.topic('post:42')).clients, []);
  });

  test('an inbox publish with no follower stores nothing; an unknown job is 404', async () => {
    const receipt = await herald.notify({ topic: 'news', inbox: true, type: 'n' });
    assert.deepEqual(receipt.notifications, []);
    await refused(herald.job('no-such-job'), 404, 'job_not_found');
  });
});

describe('users', () => {
  test('presence lists the connected clients', async () => {
    const { hello } = await subscribe('ivan', 'desk');
    const presence = await herald.presence('ivan');
    assert.equal(presence.user, 'ivan');
    assert.equal(presence.sessions.length, 1);
    assert.equal(presence.sessions[0].session, 'desk');
    assert.equal(presence.sessions[0].clients[0].client, hello.client);
    assert.equal(presence.sessions[0].clients[0].transport, 'sse');
    assert.deepEqual(await herald.presence('nobody at all'), { user: 'nobody at all', sessions: [] });
  });

  test('closing a session ends its streams and revokes its tokens', async () => {
    const token = herald.mintToken({ user: 'judy', session: 'old' });
    const stream = await openStream(server.url, token);
    streams.push(stream);
    await stream.next('hello');
    const other = await subscribe('judy', 'kept');
    assert.deepEqual(await herald.closeSession('judy', 'old'), { closed: 1 });
    assert.deepEqual(await stream.next('closed'), { reason: 'session_closed' });
    const again = await openStream(server.url, token);
    streams.push(again);
    assert.equal(again.status, 401);
    assert.equal((await again.response.json()).error.code, 'token_revoked');

    assert.deepEqual(await herald.closeAllSessions('judy'), { closed: 1 });
    assert.deepEqual(await other.stream.next('closed'), { reason: 'session_closed' });
  });

  test('ids with any characters are percent-encoded into the path', async () => {
    await herald.notify({ user: 'a/b c?d', type: 'odd' });
    const stored = await herald.notifications('a/b c?d');
    assert.equal(stored.notifications[0].type, 'odd');
  });
});

describe('inbox', () => {
  test('counts, pages, marks (read, seen, archived, unread) and deletes', async () => {
    const inbox = herald.inbox('kim');
    const { stream } = await subscribe('kim', 'k1');
    const seqs = [];
    for (let n = 1; n <= 5; n += 1) {
      seqs.push((await herald.notify({ user: 'kim', type: n % 2 ? 'odd' : 'even', data: { n } })).notifications[0].seq);
    }
    let counts = await inbox.counts();
    assert.deepEqual({ ...counts, version: 0 }, { unread: 5, unseen: 5, total: 5, archived: 0, version: 0 });

    const page = await inbox.list({ limit: 2 });
    assert.deepEqual(page.notifications.map((n) => n.seq), [seqs[4], seqs[3]]);
    assert.equal(page.next_before, seqs[3]);
    assert.equal(page.notifications[0].read_at, null);
    const older = await inbox.list({ before: page.next_before, type: 'odd' });
    assert.deepEqual(older.notifications.map((n) => n.seq), [seqs[2], seqs[0]]);

    const read = await inbox.mark([seqs[0], seqs[1]]);
    assert.equal(read.op, 'mark');
    assert.equal(read.as, 'read');
    assert.equal(read.changed, 2);
    assert.equal(read.counts.unread, 3);
    const event = await stream.next('inbox');
    assert.equal(event.as, 'read');

    const seen = await inbox.mark({ allUpTo: seqs[2] }, 'seen');
    assert.equal(seen.all_up_to, seqs[2]);
    assert.equal(seen.counts.unseen, 2);
    const archived = await inbox.mark([seqs[4]], 'archived', { exceptClient: 'AAAAAAAAAAAAAAAAAAAAAAAAAAA' });
    assert.equal(archived.counts.archived, 1);
    assert.equal(archived.counts.total, 4);
    assert.deepEqual((await inbox.list({ status: 'archived' })).notifications.map((n) => n.seq), [seqs[4]]);
    assert.equal((await inbox.mark([seqs[0]], 'unread')).counts.unread, 3);

    const deleted = await inbox.delete(seqs[3]);
    assert.deepEqual([deleted.op, deleted.changed], ['delete', 1]);
    const deletedUpTo = await inbox.delete({ allUpTo: seqs[1] });
    assert.equal(deletedUpTo.changed, 2);
    counts = await inbox.counts();
    assert.equal(counts.total, 1);
    assert.equal(counts.archived, 1);

    await refused(inbox.mark({ allUpTo: seqs[4] }, 'unread'), 400, 'invalid_request');
    await refused(inbox.list({ status: 'later' }), 400, 'invalid_status');
    assert.throws(() => inbox.mark('all'), TypeError);
    assert.throws(() => inbox.delete('all'), TypeError);
  });
});

describe('the server', () => {
  test('cluster: a single node has the local bus and no peers', async () => {
    const cluster = await herald.cluster();
    assert.equal(cluster.node.endsWith(`:${server.port}`), true, cluster.node);
    assert.deepEqual([cluster.bus, cluster.peers, cluster.envelopes_out, cluster.reconnects], ['local', [], 0, 0]);
    await refused(new Herald({ url: server.url, apiKey: 'not-the-key' }).cluster(), 401, 'invalid_api_key');
  });

  test('a server without a VAPID key: the key is 404 push_not_configured', async () => {
    await refused(herald.vapidPublicKey(), 404, 'push_not_configured');
  });
});

describe('errors', () => {
  test("the server's refusals are HeraldErrors with its status and code", async () => {
    await refused(herald.notify({ user: 'alice', client: 'x' }), 400, 'invalid_target');
    await refused(herald.notify({ client: 'AAAAAAAAAAAAAAAAAAAAAAAAAAA' }), 404, 'client_not_found');
    await refused(herald.notify({ user: 'alice', data: 'x'.repeat(70_000) }), 413, 'data_too_large');
    await refused(herald.notify({ user: 'alice', type: '' }), 400, 'invalid_request');
    await refused(herald.notify({ user: '' }), 400, 'invalid_id');
    await refused(herald.listen({ topics: ['bad topic'], user: 'alice' }), 400, 'invalid_topic');
    const wrongKey = new Herald({ url: server.url, apiKey: 'not-the-key' });
    await refused(wrongKey.notify({ user: 'alice' }), 401, 'invalid_api_key');
    const health = await wrongKey.health();
    assert.equal(health.status, 'ok');
    assert.equal(health.store, 'memory');
  });

  test('a server that does not answer: `timeout`, at the timeout', async () => {
    const sockets = [];
    const silent = createTcpServer((socket) => { sockets.push(socket); socket.on('error', () => {}); });
    await new Promise((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const client = new Herald({ url: `http://127.0.0.1:${silent.address().port}`, apiKey: API_KEY, timeoutMs: 300 });
      const started = Date.now();
      await refused(client.notify({ user: 'a' }), null, 'timeout');
      const took = Date.now() - started;
      assert.ok(took >= 250 && took < 5_000, `took ${took} ms`);
      const aborted = AbortSignal.abort();
      await refused(client.notify({ user: 'a' }, { signal: aborted, timeoutMs: 5_000 }), null, 'aborted');
    } finally {
      sockets.forEach((socket) => socket.destroy());
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  test('nobody listening: `unreachable`; an answer that is not Herald JSON: `invalid_response`', async () => {
    const closedPort = await freePort();
    await refused(new Herald({ url: `http://127.0.0.1:${closedPort}`, apiKey: API_KEY }).presence('a'), null, 'unreachable');

    const proxy = createHttpServer((_, response) => {
      response.writeHead(502, { 'content-type': 'text/html', 'retry-after': '3' }).end('<h1>Bad Gateway</h1>');
    });
    await new Promise((resolve) => proxy.listen(0, '127.0.0.1', resolve));
    try {
      await refused(new Herald({ url: `http://127.0.0.1:${proxy.address().port}/herald/`, apiKey: API_KEY }).presence('a'), 502, 'invalid_response');
    } finally {
      proxy.closeAllConnections();
      await new Promise((resolve) => proxy.close(resolve));
    }
  });

  test('a 429 carries Retry-After', async () => {
    const limiter = createHttpServer((_, response) => {
      response.writeHead(429, { 'content-type': 'application/json', 'retry-after': '2' })
        .end(JSON.stringify({ error: { code: 'rate_limited', message: 'slow down' } }));
    });
    await new Promise((resolve) => limiter.listen(0, '127.0.0.1', resolve));
    try {
      await assert.rejects(new Herald({ url: `http://127.0.0.1:${limiter.address().port}`, apiKey: API_KEY }).health(), (error) => {
        assert.deepEqual([error.status, error.code, error.message, error.retryAfter], [429, 'rate_limited', 'slow down', 2]);
        return true;
      });
    } finally {
      limiter.closeAllConnections();
      await new Promise((resolve) => limiter.close(resolve));
    }
  });
});
