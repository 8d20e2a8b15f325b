#!/usr/bin/env python3
"""Stalled-reader probe: what clients that stop reading cost a running Herald, and for how long.

Usage: stalled_readers.py PORT SERVER_PID [USERS STREAMS_PER_USER NOTIFICATIONS WAIT_SECS]
  (server started with HERALD_SECRET=s HERALD_API_KEY=k; defaults 8 1 300 45)

Opens STREAMS_PER_USER SSE streams for each of USERS users (one token per user: a single
session, so more than 50 streams evict the oldest), each on a socket with a 4 KiB receive
buffer that never reads after its request. Then publishes NOTIFICATIONS notifications of 60 KiB
to every user and reports, at each step and then every 5 s for WAIT_SECS: the server's RSS, its
established connections on PORT and their total send queue (kernel buffers, from `ss`).
Bounded: every socket is closed at the end; nothing else is started. Python 3 stdlib only.
"""
import base64, hashlib, hmac, http.client, json, socket, subprocess, sys, time

port, pid = int(sys.argv[1]), int(sys.argv[2])
users, streams, notifications, wait_secs = (list(map(int, sys.argv[3:7])) + [8, 1, 300, 45][len(sys.argv[3:7]):])[:4]
secret, api_key = b"s", "k"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=")


def token(user):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": user, "sid": "s1", "exp": int(time.time()) + 3600}).encode())
    return (head + b"." + claims + b"." + b64(hmac.new(secret, head + b"." + claims, hashlib.sha256).digest())).decode()


def rss_mb():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024


def connections():
    """Established connections to the server's port and their send queues, in MiB."""
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return len(rows), sum(int(r[1]) for r in rows) / 2**20


def report(step):
    count, send_q = connections()
    print(f"{step:<28} rss {rss_mb():7.1f} MB  connections {count:4d}  send-q {send_q:8.1f} MiB", flush=True)


sockets = []
report("start")
for u in range(users):
    for _ in range(streams):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /v1/stream HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token(f'stall{u}')}\r\n\r\n".encode())
        sockets.append(s)
time.sleep(1)
report(f"{len(sockets)} stalled streams")
api = http.client.HTTPConnection("127.0.0.1", port)
body_of = lambda u: json.dumps({"to": {"user": f"stall{u}"}, "data": "x" * (60 * 1024)})
started = time.time()
for n in range(notifications):
    for u in range(users):
        api.request("POST", "/v1/notify", body_of(u), {"authorization": f"Bearer {api_key}", "content-type": "application/json"})
        answer = api.getresponse()
        answer.read()
        assert answer.status == 200, answer.status
report(f"published {notifications}/user")
while time.time() - started < wait_secs:
    time.sleep(5)
    report(f"+{time.time() - started:.0f} s")
for s in sockets:
    s.close()
