//! [`GuardedSocket`]: a connection's socket whose writes must make progress, and
//! [`StreamEnd`], how a connection learns that the hub ended the stream it serves.
//!
//! A peer that stops reading (a frozen laptop, or an attacker) fills its TCP window, then our
//! send buffer, and from then on a write waits forever: its task, the client's queue and the
//! socket's kernel buffers (megabytes each on a fast link) stay for as long as the peer wants.
//! Measured before this guard: 8 stalled streams took the server from 292 MB to 704 MB, and one
//! token opening 200 streams kept 415 MiB of kernel buffers, the evicted ones included (their
//! write was stuck, so they never sent `closed`). So:
//!
//! - every connection's socket (the lean stream path and everything hyper serves: streams,
//!   long-poll answers, other answers, WebSocket) is a [`GuardedSocket`]: a write that makes
//!   no progress for [`crate::ServerSettings::send_timeout`] fails with `TimedOut`, which ends
//!   the connection;
//! - a connection serving a stream registers it in its [`StreamEnd`] and waits for the hub to
//!   end it alongside whatever it is doing (the lean path: alongside a write that waits, as a
//!   stream waiting for its next event learns of its end from its `closed` event); then the
//!   connection has
//!   [`crate::ServerSettings::close_grace`] to finish its write and send the `closed` event,
//!   and is dropped after that (see `crate::connection`).
//!
//! A socket dropped either way is reset (`SO_LINGER` 0) rather than closed: a plain close
//! would leave the unsent bytes in the kernel, retrying against the peer's zero window for
//! minutes.
//!
//! The stall timer costs nothing while writes go through: it is allocated when a write first
//! waits and freed as soon as one makes progress.
//!
//! Why not also bound the kernel's send buffer (`SO_SNDBUF`): measured on loopback, a stalled
//! stream holds about 2.7 MiB in its send queue (Linux autotunes up to `tcp_wmem`'s 4 MiB).
//! With this guard that lasts at most the send timeout, then the reset frees it, and the
//! kernel's own `tcp_mem` pressure limits the total meanwhile. A fixed `SO_SNDBUF` turns
//! autotuning off for the socket: it would cap a replay's throughput at buffer / RTT (256 KiB
//! over 200 ms: about 1.3 MB/s) for every client, to save memory only while a client stalls.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use herald_core::EndSignal;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The stream served on a connection, if any, so that the connection's task can wait for the
/// hub to end it even while a write is stuck (no one polls the stream then).
#[derive(Debug, Default)]
pub(crate) struct StreamEnd {
    state: Mutex<EndState>,
    /// Reset the socket instead of closing it when it is dropped.
    reset: AtomicBool,
}

#[derive(Debug, Default)]
struct EndState {
    signal: Option<EndSignal>,
    /// The connection's task, waiting while no stream is registered: woken when one is.
    waiter: Option<Waker>,
    /// When what is left of an ended stream must have been written (see `crate::connection`).
    grace_until: Option<Instant>,
}

impl StreamEnd {
    /// The stream `signal` now runs on this connection.
    pub(crate) fn set(&self, signal: EndSignal) {
        let waiter = {
            let mut state = self.state.lock();
            state.signal = Some(signal);
            state.waiter.take()
        };
        if let Some(waiter) = waiter {
            waiter.wake();
        }
    }

    /// The stream's body was dropped (it ended, or the client left). A stream the hub ended
    /// stays registered: the connection must still close within the grace, even if the body
    /// handed its `closed` event to a buffer that the socket does not take.
    fn finish(&self) {
        let mut state = self.state.lock();
        if state.signal.as_ref().is_some_and(|signal| signal.reason().is_none()) {
            state.signal = None;
        }
    }

    /// `Ready` once the hub ended the stream registered here.
    fn poll_ended(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock();
        match &state.signal {
            Some(signal) => signal.poll_ended(cx).map(|_| ()),
            None => {
                state.waiter = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Waits until the hub ends the stream registered here (now or later).
    pub(crate) async fn ended(&self) {
        // The waker left in `waiter` would keep the waiting task's memory (its tokio task cell)
        // allocated for as long as this `StreamEnd` lives: after an upgrade, that is the
        // WebSocket's whole life (258 B per idle WebSocket, measured with heaptrack). So it is
        // taken back when the wait ends or is given up.
        struct ForgetWaiter<'a>(&'a StreamEnd);
        impl Drop for ForgetWaiter<'_> {
            fn drop(&mut self) {
                self.0.state.lock().waiter = None;
            }
        }
        let _forget = ForgetWaiter(self);
        std::future::poll_fn(|cx| self.poll_ended(cx)).await
    }

    /// When the close grace of the stream ended here runs out, once it started.
    pub(crate) fn grace_until(&self) -> Option<Instant> {
        self.state.lock().grace_until
    }

    /// Starts the close grace of the stream ended here (once: a second call keeps the first
    /// deadline) and returns when it runs out.
    pub(crate) fn start_grace(&self, close_grace: Duration) -> Instant {
        *self.state.lock().grace_until.get_or_insert_with(|| Instant::now() + close_grace)
    }

    /// Makes the socket reset rather than close when it is dropped.
    pub(crate) fn reset_on_drop(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }
}

/// Unregisters a stream from its connection's [`StreamEnd`] when dropped (the stream's body,
/// on the hyper path, is dropped when it ends).
pub(crate) struct Registered(pub(crate) Arc<StreamEnd>);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// A socket whose writes time out when they make no progress; see the module docs.
pub(crate) struct GuardedSocket {
    socket: TcpStream,
    send_timeout: Duration,
    stream_end: Arc<StreamEnd>,
    /// Armed while a write waits: fires when the stall has lasted `send_timeout`.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl GuardedSocket {
    pub(crate) fn new(socket: TcpStream, send_timeout: Duration) -> Self {
        Self { socket, send_timeout, stream_end: Arc::default(), stalled: None }
    }

    /// Where a stream running on this connection registers (see [`StreamEnd`]).
    pub(crate) fn stream_end(&self) -> &Arc<StreamEnd> {
        &self.stream_end
    }

    /// The write's outcome, or a `TimedOut` error once writes made no progress for
    /// `send_timeout`; arms the stall timer while a write waits.
    fn guard<T>(&mut self, cx: &mut Context<'_>, written: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if written.is_ready() {
            // Progress (or a final error): the next wait starts a new stall.
            self.stalled = None;
            return written;
        }
        let send_timeout = self.send_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + send_timeout)));
        if stalled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        self.stream_end.reset_on_drop();
        tracing::debug!(?send_timeout, "dropping a connection whose peer stopped reading");
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the peer stopped reading")))
    }
}

impl Drop for GuardedSocket {
    fn drop(&mut self) {
        if self.stream_end.reset.load(Ordering::Relaxed) {
            // Frees the socket's buffers at once (see the module docs).
            let _ = self.socket.set_zero_linger();
        }
    }
}

impl AsyncRead for GuardedSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.socket).poll_write(cx, buf);
        self.guard(cx, written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.socket).poll_write_vectored(cx, bufs);
        self.guard(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.socket).poll_shutdown(cx)
    }
}
