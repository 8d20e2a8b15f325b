//! Publish benchmark: what one durable append costs the SQLite store under the load of
//! `bench/compare.sh` (many concurrent publishers, each to a random user), without HTTP or
//! fan-out, so that a change to the writer can be measured in seconds.
//!
//! ```text
//! cargo bench -p herald-store --bench publish
//! BENCH_SECS=10 BENCH_USERS=5000 BENCH_TASKS=32 cargo bench -p herald-store --bench publish
//! ```
//!
//! `BENCH_TASKS` tasks (default 32) on a 2-worker tokio runtime each append one notification at a
//! time to a random one of `BENCH_USERS` users (default 5,000) for `BENCH_SECS` seconds (default
//! 8), after a warm-up of 2 s (so the file holds the users and some history). It prints
//! appends/s, the process's CPU per append (user + system, all threads: the writer, the
//! checkpointer, tokio), the group-commit factor (appends per transaction), append latency
//! p50/p99, and the WAL bytes written per append (the writer's count of pages it wrote, from
//! `WriterStats::wal_bytes`: the WAL file's size says nothing, as it is reused), settling
//! included: the appends staged during the run are settled before the CPU time is taken
//! (`BENCH_SETTLE_ROWS`, `BENCH_SETTLE_CHUNK`, `BENCH_SETTLE_MAX`, `BENCH_SETTLE_AFTER_MS` override `Settling`'s `rows`, `chunk_rows`, `max_rows` and `after`).
//! `BENCH_DROP=a,b` drops
//! those indexes after opening, to see what an index costs an append. Without `--bench` (as
//! `cargo test --benches` runs it) it runs 0.5 s to check that it works.
//!
//! With `HERALD_TEST_POSTGRES` set (a PostgreSQL URL), the same load then runs against a
//! `PostgresStore` in a schema of its own (dropped afterwards), and prints appends/s, the CPU
//! per append of this process and, separately, of the PostgreSQL server's processes (every
//! process named `postgres` on this machine: other users of that server count too), the
//! group-commit factor, and the latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_core::notification::now_ms;
use herald_core::{Audience, NewNotification, Retention, Store, UserId};
use herald_store::{PostgresOptions, PostgresStore, Settling, SqliteStore};
use serde_json::value::RawValue;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// CPU time (user + system) of this process so far: every thread.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn notification(user: u64, i: u64) -> NewNotification {
    NewNotification {
        user: UserId::new(format!("user-{user}")).unwrap(),
        kind: Arc::from("bench"),
        data: Arc::from(
            RawValue::from_string(format!(r#"{{"bench_id":{i},"bench_ts":{}}}"#, now_ms())).unwrap(),
        ),
        created_at_ms: now_ms(),
        audience: Audience::user(),
        push: None,
    }
}

/// Runs the tasks for `secs`; returns the latency of each append that finished, in µs.
async fn run(store: &Arc<impl Store>, tasks: u64, users: u64, secs: f64) -> Vec<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    // The payload's id: unique per append, like the compare.sh load's.
    let next_id = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (store, stop, next_id) = (Arc::clone(store), Arc::clone(&stop), Arc::clone(&next_id));
        handles.push(tokio::spawn(async move {
            // A small xorshift: no dependency, a different sequence per task.
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (task + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = next_id.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                store.append(vec![notification(x % users, i)], None).await.unwrap();
                latencies.push(start.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await.unwrap());
    }
    latencies
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let secs = if full { env("BENCH_SECS", 8) as f64 } else { 0.5 };
    let warmup = if full { 2.0 } else { 0.2 };
    let (users, tasks) = (env("BENCH_USERS", 5_000), env("BENCH_TASKS", 32));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let defaults = Settling::default();
        let settling = Settling {
            rows: env("BENCH_SETTLE_ROWS", defaults.rows as u64) as usize,
            chunk_rows: env("BENCH_SETTLE_CHUNK", defaults.chunk_rows as u64) as usize,
            max_rows: env("BENCH_SETTLE_MAX", defaults.max_rows as u64) as usize,
            after: Duration::from_millis(env("BENCH_SETTLE_AFTER_MS", defaults.after.as_millis() as u64)),
        };
        let store = Arc::new(
            SqliteStore::open_with(&dir.path().join("herald.db"), Retention::default(), settling).unwrap(),
        );
        if let Ok(drop) = std::env::var("BENCH_DROP") {
            let conn = rusqlite::Connection::open(dir.path().join("herald.db")).unwrap();
            for index in drop.split(',').filter(|index| !index.is_empty()) {
                conn.execute_batch(&format!("DROP INDEX {index}")).unwrap();
            }
        }
        run(&store, tasks, users, warmup).await;
        // The measured appends are charged what settling them costs, and only that: the warm-up's
        // are settled before, the measured ones after (inside the CPU time, outside the rate).
        store.settle_all().await.unwrap();
        let before = store.writer_stats();
        let cpu = process_cpu();
        let start = Instant::now();
        let mut latencies = run(&store, tasks, users, secs).await;
        let appends = latencies.len() as u64;
        let elapsed = start.elapsed();
        store.settle_all().await.unwrap();
        let cpu = process_cpu() - cpu;
        let after = store.writer_stats();
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1_000.0;
        let batches = after.batches - before.batches;
        let wal_bytes = after.wal_bytes - before.wal_bytes;
        println!(
            "sqlite publish: {tasks} tasks, {users} users, {:.1} s: {:.0} appends/s, {:.1} µs CPU per append, \
             {:.1} appends per commit, {:.0} WAL bytes per append, latency p50 {:.2} ms p99 {:.2} ms",
            elapsed.as_secs_f64(),
            appends as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / appends as f64,
            (after.requests - before.requests) as f64 / batches.max(1) as f64,
            wal_bytes as f64 / appends as f64,
            at(0.5),
            at(0.99),
        );
        assert!(appends > 0, "no append finished");
        drop(store);
        if let Some(url) = std::env::var("HERALD_TEST_POSTGRES").ok().filter(|url| !url.is_empty()) {
            postgres(&url, tasks, users, warmup, secs).await;
        }
    });
}

/// The same load against a `PostgresStore` in a schema of its own, dropped afterwards.
async fn postgres(url: &str, tasks: u64, users: u64, warmup: f64, secs: f64) {
    let schema = format!("herald_bench_{}", std::process::id());
    let options = PostgresOptions { schema: Some(schema.clone()), ..PostgresOptions::new(url) };
    let store = Arc::new(PostgresStore::open(options, Retention::default()).await.unwrap());
    run(&store, tasks, users, warmup).await;
    let before = store.writer_stats();
    let (cpu, server_cpu) = (process_cpu(), processes_cpu("postgres"));
    let start = Instant::now();
    let mut latencies = run(&store, tasks, users, secs).await;
    let elapsed = start.elapsed();
    let (cpu, server_cpu) = (process_cpu() - cpu, processes_cpu("postgres").saturating_sub(server_cpu));
    let after = store.writer_stats();
    let appends = latencies.len() as u64;
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] as f64 / 1_000.0;
    println!(
        "postgres publish: {tasks} tasks, {users} users, {:.1} s: {:.0} appends/s, {:.1} µs CPU per append here \
         + {:.1} µs in PostgreSQL, {:.1} appends per commit, latency p50 {:.2} ms p99 {:.2} ms",
        elapsed.as_secs_f64(),
        appends as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / appends as f64,
        server_cpu.as_secs_f64() * 1e6 / appends as f64,
        (after.requests - before.requests) as f64 / (after.batches - before.batches).max(1) as f64,
        at(0.5),
        at(0.99),
    );
    assert!(appends > 0, "no append finished");
    drop(store);
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// CPU time (user + system) of every process on this machine named `name`, so far (from
/// `/proc/<pid>/stat`; processes that ended meanwhile are not counted).
fn processes_cpu(name: &str) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state …`: the comm may hold spaces, so split after its closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if &stat[open + 1..close] != name {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the comm.
        let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        total += tick(11) + tick(12);
    }
    Duration::from_secs_f64(total / ticks)
}
