//! What a WebSocket tab keeps in server memory (issue 14), counted by this binary's global
//! allocator: the bytes allocated and not yet freed, in the whole process.
//!
//! A binary of its own, apart from `tests/it`: the allocator counts every allocation of the
//! process, so nothing else may run in it while it counts. Each test takes [`COUNTING`], so
//! that the two never count each other's work. The clients are blocking `std` sockets read into
//! buffers on the stack: they allocate nothing while connected, and what the count shows is the
//! server's.
//!
//! - A tab that got a 64 KiB notification must not keep a buffer of its size: tokio-tungstenite,
//!   which served `/v1/ws` until issue 14, kept its write buffer at the largest frame it ever
//!   wrote (64 KiB per tab, for the tab's life). This test failed with it.
//! - An idle WebSocket tab costs the server about what an idle SSE stream does (it cost 2.3
//!   times as much with tokio-tungstenite: 4.4 KiB of heap against 1.9 KiB).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use herald_core::notification::Publish;
use herald_core::{Retention, UserId};
use herald_server::{Herald, RunningServer, ServerSettings};
use herald_store::MemoryStore;
use serde_json::value::RawValue;

/// Counts the bytes allocated and not yet freed.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to `System` unchanged; the counter only adds up the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System.alloc`'s.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System.alloc_zeroed`'s.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `System.dealloc`'s.
        unsafe { System.dealloc(pointer, layout) };
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is `System.realloc`'s.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Taken by each test for as long as it counts (the harness runs tests on several threads).
static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SECRET: &str = "ws-memory-secret";
/// Bytes of `data` in the large notification: the most a publish may carry by default.
const LARGE_DATA_BYTES: usize = 64 * 1024;
/// How long a client waits for the server's bytes before the test fails.
const READ_WAIT: Duration = Duration::from_secs(10);

/// Live bytes once the server has settled: the smallest of a few samples, so that a short-lived
/// allocation of the runtime (a timer tick, the hub's sweep) is not taken for kept memory.
fn settled_live_bytes() -> isize {
    let mut least = isize::MAX;
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        least = least.min(LIVE_BYTES.load(Ordering::Relaxed));
    }
    least
}

fn start_server(runtime: &tokio::runtime::Runtime) -> (RunningServer, herald_core::Notifier) {
    // Both ends of 600 connections are in this process: above a soft limit of 1,024 files.
    herald_server::caps::raise_open_files_limit();
    runtime.block_on(async {
        let store = Arc::new(MemoryStore::new(Retention::default()));
        // Every client comes from 127.0.0.1, hundreds within a second: no per-address caps.
        let caps =
            herald_server::caps::Caps { ip_connections_max: 0, ip_requests_per_sec: 0, ..Default::default() };
        let settings = ServerSettings { caps, ..ServerSettings::default() };
        let herald = Herald::builder(store, SECRET, "ws-memory-api-key").settings(settings).build();
        let notifier = herald.notifier();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (herald_server::start(herald, listener).unwrap(), notifier)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn token(user: &str, session: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({ "sub": user, "sid": session, "iat": now, "exp": now + 3600 });
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Connects to `addr`, sends `request` and reads the response head (into a stack buffer);
/// panics unless it starts with `status_line`.
fn open(addr: SocketAddr, request: &str, status_line: &str) -> TcpStream {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(READ_WAIT)).unwrap();
    socket.write_all(request.as_bytes()).unwrap();
    let mut head = [0u8; 1024];
    let mut len = 0;
    while !head[..len].ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut head[len..=len]).expect("a response head");
        len += 1;
    }
    let head = std::str::from_utf8(&head[..len]).unwrap();
    assert!(head.starts_with(status_line), "{head}");
    socket
}

/// Opens `/v1/ws` and reads its `hello` frame.
fn open_websocket(addr: SocketAddr, token: &str) -> TcpStream {
    let request = format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut socket = open(addr, &request, "HTTP/1.1 101");
    let (opcode, _) = read_server_frame(&mut socket);
    assert_eq!(opcode, 0x1, "hello is a text frame");
    socket
}

/// Opens `/v1/stream` and reads up to the end of its `hello` event.
fn open_stream(addr: SocketAddr, token: &str) -> TcpStream {
    let request = format!("GET /v1/stream?token={token} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut socket = open(addr, &request, "HTTP/1.1 200");
    let mut last_two = [0u8; 2];
    while &last_two != b"\n\n" {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).expect("the hello event");
        last_two = [last_two[1], byte[0]];
    }
    socket
}

/// Reads one frame from the server, skipping pings; its opcode and payload length (the payload
/// is read into a buffer on the stack and thrown away).
fn read_server_frame(socket: &mut TcpStream) -> (u8, u64) {
    loop {
        let mut header = [0u8; 2];
        socket.read_exact(&mut header).expect("a frame header");
        let opcode = header[0] & 0x0f;
        let len = match header[1] & 0x7f {
            126 => {
                let mut extended = [0u8; 2];
                socket.read_exact(&mut extended).unwrap();
                u64::from(u16::from_be_bytes(extended))
            }
            127 => {
                let mut extended = [0u8; 8];
                socket.read_exact(&mut extended).unwrap();
                u64::from_be_bytes(extended)
            }
            len => u64::from(len),
        };
        let mut left = len;
        let mut discard = [0u8; 4096];
        while left > 0 {
            let n = left.min(discard.len() as u64) as usize;
            socket.read_exact(&mut discard[..n]).expect("the frame's payload");
            left -= n as u64;
        }
        if opcode != 0x9 {
            return (opcode, len);
        }
    }
}

fn publish(runtime: &tokio::runtime::Runtime, notifier: &herald_core::Notifier, user: &str, data: String) {
    let data: Arc<RawValue> = RawValue::from_string(data).unwrap().into();
    let publish = Publish::to_user(UserId::new(user).unwrap(), "test", data);
    runtime.block_on(notifier.publish(publish)).expect("the publish is stored");
}

#[test]
fn a_tab_that_got_a_64_kib_notification_keeps_no_buffer_of_it() {
    const TABS: usize = 40;
    let _counting = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = runtime();
    let (server, notifier) = start_server(&runtime);
    let token = token("alice", "s1");
    let mut tabs: Vec<TcpStream> = (0..TABS).map(|_| open_websocket(server.addr, &token)).collect();
    // A first, small notification: what the user's log and the store set up once is not
    // counted below.
    publish(&runtime, &notifier, "alice", "1".to_owned());
    for tab in &mut tabs {
        assert_eq!(read_server_frame(tab).0, 0x1);
    }
    let before = settled_live_bytes();

    let large = format!("\"{}\"", "x".repeat(LARGE_DATA_BYTES - 2));
    publish(&runtime, &notifier, "alice", large);
    for tab in &mut tabs {
        let (opcode, len) = read_server_frame(tab);
        assert_eq!(opcode, 0x1);
        assert!(len > LARGE_DATA_BYTES as u64, "the whole notification came: {len} bytes");
    }
    let kept = settled_live_bytes() - before;
    eprintln!("kept after one 64 KiB notification to {TABS} tabs: {kept} B");

    // The store keeps the notification once, its data and its JSON: 192 KiB with 1 tab as with
    // 40 (4.8 KiB a tab here). A tab that kept a buffer of the frame it wrote would keep 64 KiB
    // more each (70 KiB a tab with tokio-tungstenite).
    let kept_per_tab = kept / TABS as isize;
    assert!(
        kept_per_tab < 16 * 1024,
        "after one 64 KiB notification the server kept {kept} bytes more: {kept_per_tab} per tab"
    );
    drop(tabs);
    runtime.block_on(server.shutdown()).unwrap();
}

#[test]
fn an_idle_websocket_tab_costs_about_what_an_sse_stream_does() {
    // 6 users × 50 tabs (one session each, at its bound) of each kind.
    const USERS: usize = 6;
    const TABS_PER_USER: usize = 50;
    let _counting = COUNTING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let runtime = runtime();
    let (server, _notifier) = start_server(&runtime);
    let tokens: Vec<(String, String)> = (0..USERS)
        .map(|user| (token(&format!("ws{user}"), "s1"), token(&format!("sse{user}"), "s1")))
        .collect();
    // One of each first: what the first connection of a kind sets up is not a tab's cost.
    let warm_up =
        [open_websocket(server.addr, &token("warm", "ws")), open_stream(server.addr, &token("warm", "sse"))];
    let mut tabs: Vec<TcpStream> = Vec::with_capacity(2 * USERS * TABS_PER_USER);

    let before = settled_live_bytes();
    for (ws_token, _) in &tokens {
        tabs.extend((0..TABS_PER_USER).map(|_| open_websocket(server.addr, ws_token)));
    }
    let after_websockets = settled_live_bytes();
    for (_, sse_token) in &tokens {
        tabs.extend((0..TABS_PER_USER).map(|_| open_stream(server.addr, sse_token)));
    }
    let after_streams = settled_live_bytes();

    let count = (USERS * TABS_PER_USER) as isize;
    let websocket_bytes = (after_websockets - before) / count;
    let stream_bytes = (after_streams - after_websockets) / count;
    eprintln!("heap per idle tab: WebSocket {websocket_bytes} B, SSE {stream_bytes} B");
    // The two differ in their tasks (the WebSocket's also reads frames) and in hyper's boxed
    // connection, which an upgraded WebSocket keeps: a few hundred bytes at most.
    assert!(
        websocket_bytes <= stream_bytes + 512,
        "an idle WebSocket tab holds {websocket_bytes} B of heap, an SSE stream {stream_bytes} B"
    );
    drop(tabs);
    drop(warm_up);
    runtime.block_on(server.shutdown()).unwrap();
}
