//! `herald-bench fsync-probe`: what one `fdatasync` costs on the disk under a directory, the
//! least a durable publish waits for. `bench/compare.sh` runs it in the file system of Herald's
//! data dir before the servers, and reports it next to their latencies: a durable store's p99
//! is judged against it.
//!
//! Two cases, `--count` times each, on one scratch file removed afterwards:
//! - **append**: 4 KiB written at the end of the file, then `fdatasync`. The file grows, so its
//!   new size must reach the disk too (the journal's work), as with SQLite's WAL appends.
//! - **overwrite**: 4 KiB written over a block already on disk, then `fdatasync`: the data only.
//!
//! Plain `std` file calls (`write_all_at`, [`File::sync_data`], which is `fdatasync` on Linux).
//!
//! Each case also reports the CPU the calling thread spent per write + sync (most of it in the
//! kernel: page writeback, the block layer, the virtio kick in a VM). That is the least server
//! CPU a durable publish that cannot share its sync with another costs, whatever the store does:
//! the bound behind "durable CPU at 1,000 publishes/s" (docs/BENCHMARKS.md).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, ensure};

use crate::stats::{self, Percentiles};

/// Bytes of each write: a page, what SQLite writes per WAL frame of a small notification.
pub const BLOCK_BYTES: usize = 4096;
/// Most syncs per case (at 3.8 ms each, the slowest disk measured here, 100,000 take ~6 min).
pub const COUNT_MAX: u32 = 100_000;

/// Options of `herald-bench fsync-probe`.
#[derive(Debug, Clone, clap::Args)]
pub struct FsyncProbeArgs {
    /// A directory on the disk to measure (its scratch file is removed afterwards).
    #[arg(long)]
    pub dir: PathBuf,
    /// Syncs per case, 1 to 100,000.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=i64::from(COUNT_MAX)))]
    pub count: u32,
}

/// What the probe measured: each case's latencies (write + `fdatasync`).
#[derive(Debug, Clone)]
pub struct FsyncProbe {
    pub dir: PathBuf,
    pub count: u32,
    pub append: Percentiles,
    pub overwrite: Percentiles,
    /// CPU of the probing thread per write + sync, µs, in each case.
    pub append_cpu_us: f64,
    pub overwrite_cpu_us: f64,
}

impl FsyncProbe {
    /// One line, as `bench/compare.sh` puts it in machine.txt and above the tables.
    pub fn line(&self) -> String {
        format!(
            "fdatasync on this disk ({}, {} × 4 KiB per case): append p50 {:.2} ms, p99 {:.2} ms, \
             CPU {:.0} µs; overwrite p50 {:.2} ms, p99 {:.2} ms, CPU {:.0} µs",
            self.dir.display(),
            self.count,
            self.append.p50_ms,
            self.append.p99_ms,
            self.append_cpu_us,
            self.overwrite.p50_ms,
            self.overwrite.p99_ms,
            self.overwrite_cpu_us
        )
    }
}

/// Runs both cases in `args.dir`.
pub fn probe(args: &FsyncProbeArgs) -> anyhow::Result<FsyncProbe> {
    ensure!((1..=COUNT_MAX).contains(&args.count), "--count is 1 to {COUNT_MAX}");
    let path = args.dir.join(format!(".herald-fsync-probe-{}", std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    let result = measure(&file, args.count);
    drop(file);
    let removed = std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()));
    let ((append, append_cpu_us), (overwrite, overwrite_cpu_us)) = result?;
    removed?;
    Ok(FsyncProbe {
        dir: args.dir.clone(),
        count: args.count,
        append,
        overwrite,
        append_cpu_us,
        overwrite_cpu_us,
    })
}

/// A case's latencies and the thread's CPU per write + sync (µs).
type Case = (Percentiles, f64);

/// The overwrite case on the file's first block, then the append case after it.
fn measure(file: &File, count: u32) -> anyhow::Result<(Case, Case)> {
    let mut block = [0u8; BLOCK_BYTES];
    file.write_all_at(&block, 0)?;
    // The first block and the file's size are on disk before the overwrites are timed.
    file.sync_all()?;
    let mut timed = |offset_of: &dyn Fn(u32) -> u64| -> anyhow::Result<Case> {
        let mut latency = stats::histogram();
        let cpu_before = crate::sys::thread_cpu_ns();
        for i in 0..count {
            // Different bytes each time, so nothing can skip a write as unchanged.
            block.fill(i as u8 ^ 0x5a);
            let started = Instant::now();
            file.write_all_at(&block, offset_of(i)).context("write")?;
            file.sync_data().context("fdatasync")?;
            stats::record(&mut latency, started.elapsed().as_nanos() as u64);
        }
        let cpu_us = (crate::sys::thread_cpu_ns() - cpu_before) as f64 / 1_000.0 / f64::from(count);
        Ok((Percentiles::of(&latency), cpu_us))
    };
    let overwrite = timed(&|_| 0)?;
    let append = timed(&|i| (u64::from(i) + 1) * BLOCK_BYTES as u64)?;
    Ok((append, overwrite))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_cases_are_measured_and_the_scratch_file_removed() {
        let dir = tempfile::tempdir().unwrap();
        let args = FsyncProbeArgs { dir: dir.path().to_owned(), count: 5 };
        let probe = probe(&args).unwrap();
        assert_eq!((probe.append.count, probe.overwrite.count), (5, 5));
        assert!(probe.append.p50_ms > 0.0 && probe.append.p99_ms >= probe.append.p50_ms);
        assert!(probe.overwrite.p50_ms > 0.0);
        // A write and a sync are system calls: some CPU each, far less than their latency.
        assert!(
            probe.append_cpu_us > 0.0 && probe.append_cpu_us < probe.append.p99_ms * 1_000.0,
            "{probe:?}"
        );
        assert!(probe.overwrite_cpu_us > 0.0, "{probe:?}");
        assert!(probe.line().starts_with("fdatasync on this disk ("), "{}", probe.line());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the scratch file is removed");
        let missing = FsyncProbeArgs { dir: dir.path().join("missing"), count: 1 };
        assert!(super::probe(&missing).is_err());
    }
}
