// A small Socket.IO server for bench/compare.sh, the way an app would use Socket.IO to notify
// its users: every connection joins the room of its user (the `user` query parameter of the
// handshake), and the app's backend emits to a room with `POST /emit/<room>` and a JSON body,
// which clients receive as the event `n`. Nothing is stored: a client that is not connected at
// that moment misses the event (Socket.IO's own delivery guarantee is "at most once").
//
// Broadcast (bench/broadcast.sh): a connection whose handshake has a `room` query parameter
// joins that room too, as a chat room's members would; `POST /emit/<room>` reaches all of them.
// A user's room and a shared one are both plain Socket.IO rooms, so the one emit route serves
// both (the names must not collide: the benchmark's users are u0, u1, …).
//
// Settings (all for a fair, lean comparison): WebSocket transport only (no long-polling
// upgrade dance), no per-message deflate, no HTTP compression, the default ping interval (25 s).
//
// Cluster mode (bench/cluster.sh): with REDIS_URL set, several of these processes, each on its
// own PORT, are one Socket.IO cluster through `@socket.io/redis-adapter` (ioredis clients): an
// emit on any node is published on Redis (one channel for the namespace, which every node
// subscribes to) and each node sends it to its own sockets in the room. No sticky sessions are
// needed: with WebSocket as the only transport, a client's whole session is one connection to
// one node (stickiness matters only for HTTP long-polling, whose requests must all reach the
// node that holds the session). The answer to `POST /emit` does not wait for Redis.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const host = '127.0.0.1';
const port = Number(process.env.PORT || 7312);
const redisUrl = process.env.REDIS_URL || '';
// Largest request body accepted by /emit (the payloads of the benchmark are about 50 bytes).
const BODY_BYTES_MAX = 1 << 20;

const server = http.createServer((req, res) => {
  const match = /^\/emit\/([A-Za-z0-9_-]{1,128})$/.exec(req.url);
  if (req.method !== 'POST' || !match) {
    reply(res, 404, '{"error":"not found"}');
    return;
  }
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > BODY_BYTES_MAX) {
      reply(res, 413, '{"error":"too large"}');
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    let payload;
    try {
      payload = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      reply(res, 400, '{"error":"invalid json"}');
      return;
    }
    io.to(match[1]).emit('n', payload);
    reply(res, 200, '{"ok":true}');
  });
});

function reply(res, status, body) {
  if (res.headersSent) return;
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

// Publishers keep their connections open between phases of a run: do not close idle ones after
// Node's default 5 s, nor after some number of requests.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;
server.maxRequestsPerSocket = 0;

const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: BODY_BYTES_MAX,
});

io.on('connection', (socket) => {
  const { user, room } = socket.handshake.query;
  // Joined synchronously, before the namespace's CONNECT packet reaches the client, so a
  // client that saw `40` is in its rooms.
  if (typeof user === 'string' && user.length > 0) socket.join(user);
  if (typeof room === 'string' && room.length > 0) socket.join(room);
});

// The Redis clients of cluster mode (publishing, subscribed), closed on exit.
const redisClients = [];

// Cluster mode: the adapter is in place, and both Redis connections ready, before the port is
// opened, so that the first client that connects is already part of the cluster.
async function joinCluster() {
  const { createAdapter } = require('@socket.io/redis-adapter');
  const Redis = require('ioredis');
  // Only this machine: the benchmark talks to 127.0.0.1 and nothing else.
  if (!/^redis:\/\/127\.0\.0\.1:\d+\/?$/.test(redisUrl)) {
    throw new Error(`REDIS_URL must be redis://127.0.0.1:PORT, not ${redisUrl}`);
  }
  const options = { lazyConnect: true, maxRetriesPerRequest: 3, enableOfflineQueue: true };
  const pub = new Redis(redisUrl, options);
  const sub = pub.duplicate();
  redisClients.push(pub, sub);
  for (const client of redisClients) client.on('error', (error) => console.error(`redis: ${error.message}`));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
  return ` (cluster through Redis at ${redisUrl}, @socket.io/redis-adapter ${require('@socket.io/redis-adapter/package.json').version})`;
}

(redisUrl ? joinCluster() : Promise.resolve(''))
  .then((cluster) => {
    server.listen(port, host, () => {
      console.error(
        `socket.io ${require('socket.io/package.json').version} listening on http://${host}:${port}${cluster}`,
      );
    });
  })
  .catch((error) => {
    console.error(`cannot start: ${error.message}`);
    process.exit(1);
  });

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    io.close();
    for (const client of redisClients) client.disconnect();
    process.exit(0);
  });
}
