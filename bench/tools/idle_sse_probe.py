#!/usr/bin/env python3
"""Idle SSE memory probe: opens N SSE streams to a running Herald and reports its RSS per stream.

Usage: idle_sse_probe.py N PORT SERVER_PID   (server started with HERALD_SECRET=ssss… (32 times s))
Users are u0..u(N/3), each with 3 sessions of one tab. Connections are held 2 s, then closed.
A quick cross-check of herald-bench's idle workload, with no dependency beyond Python 3.
"""
import asyncio, base64, hmac, hashlib, json, os, sys, time, resource
N = int(sys.argv[1]); port = int(sys.argv[2]); pid = int(sys.argv[3]); secret = b"s" * 32
resource.setrlimit(resource.RLIMIT_NOFILE, (19000, 20000))
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=")
def tok(u, s):
    h = b64(json.dumps({"alg":"HS256","typ":"JWT"}).encode()); c = b64(json.dumps({"sub":u,"sid":s,"iat":int(time.time()),"exp":int(time.time())+3600}).encode())
    return (h+b"."+c+b"."+b64(hmac.new(secret, h+b"."+c, hashlib.sha256).digest())).decode()
def rss(): 
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])*1024
async def one(i, conns):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t = tok(f"u{i//3}", f"s{i%3}")
    w.write(f"GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nAccept: text/event-stream\r\n\r\n".encode())
    data = b""
    while b"event: hello" not in data: data += await r.read(4096)
    conns.append((r, w))
async def main():
    conns = []; before = rss(); t0 = time.time()
    sem = asyncio.Semaphore(200)
    async def g(i):
        async with sem: await one(i, conns)
    await asyncio.gather(*(g(i) for i in range(N)))
    t1 = time.time(); await asyncio.sleep(2); after = rss()
    print(f"{N} conns in {t1-t0:.1f}s; rss before {before/1e6:.1f} MB after {after/1e6:.1f} MB; per conn {(after-before)/N:.0f} B")
asyncio.run(main())
