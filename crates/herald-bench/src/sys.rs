//! The few operating-system calls the generator needs, each wrapped once: a clock shared by all
//! processes, the open-files limit, and sockets bound to a chosen loopback source address.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::{TcpSocket, TcpStream};

/// Nanoseconds on `CLOCK_MONOTONIC`. It is one clock for every process on the machine, so a
/// send time taken by a publisher in the parent can be subtracted from a receive time taken by a
/// subscriber in a worker process; `Instant` would do the same but cannot be sent across a pipe.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds of CPU (user and system) the calling thread has used: `CLOCK_THREAD_CPUTIME_ID`,
/// precise where `/proc`'s ticks are 10 ms.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec and the thread CPU clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft limit of open files towards `want` (never above the hard limit) and returns
/// the soft limit in force afterwards.
pub fn raise_fd_limit(want: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    let target = want.min(limit.rlim_max);
    if limit.rlim_cur < target {
        let raised = libc::rlimit { rlim_cur: target, rlim_max: limit.rlim_max };
        // SAFETY: `raised` is a valid rlimit; a failure leaves the old limit, which we report.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return target;
        }
    }
    limit.rlim_cur
}

/// Clock ticks per second, the unit of `utime` and `stime` in `/proc/<pid>/stat`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// Opens a TCP connection to `dest`, from `source` if given. The port is picked at `connect`
/// time (`IP_BIND_ADDRESS_NO_PORT`), so binding a source address does not use up a port per
/// socket before the destination is known: each worker gets its own 127.x address and thus its
/// own 28,000 ephemeral ports per server, and sockets left in TIME_WAIT by a previous run on the
/// same ports do not starve the next one.
pub async fn connect_from(source: Option<Ipv4Addr>, dest: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        let one: libc::c_int = 1;
        // SAFETY: the fd is a live socket owned by `socket`; the option value is a c_int.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        socket.bind(SocketAddr::new(ip.into(), 0))?;
    }
    let stream = socket.connect(dest).await?;
    // Publishers send small requests back to back; Nagle would add up to 40 ms to some.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The loopback source address of worker `index`: 127.0.(index + 1).1, one per worker.
pub fn worker_source_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, (index % 250 + 1) as u8, 1)
}
