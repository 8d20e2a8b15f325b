//! Memory and CPU of a server, read from `/proc`, summed over a [`ServerSet`]: the given processes
//! and all their descendants (nginx's workers, a server started under a shell, the nodes of a
//! cluster and its broker), and optionally the share of a PostgreSQL cluster that serves one
//! database.
//!
//! A server on the machine's PostgreSQL is not one process tree of its own: the postmaster's
//! children serve every database of the machine, some of them other programs' (tests, other
//! benchmarks). So [`PostgresShare`] counts the postmaster, its background processes (WAL writer,
//! checkpointer, background writer, autovacuum, …: the work of any database's writes lands there)
//! and the client backends connected to the one database, and leaves out the client backends of
//! every other database. A backend that ends before the last sample takes its CPU with it (the
//! postmaster reaps it): Herald's pool keeps its connections, so that is rare.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;

use serde::{Deserialize, Serialize};

use crate::sys::clock_ticks_per_sec;

/// One reading of a process tree.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcSample {
    /// How many processes were found (the roots that still live, and their descendants).
    pub processes: usize,
    /// Sum of `VmRSS`. Counts pages shared by several processes (nginx's shared memory zone,
    /// which Nchan uses for messages and channels) once per process that touched them.
    pub rss_bytes: u64,
    /// Sum of `Pss` from `smaps_rollup`: each shared page is divided among the processes that
    /// map it, so the sum is the tree's real footprint. `None` where smaps_rollup is unreadable.
    pub pss_bytes: Option<u64>,
    /// Sum of `utime + stime`, in seconds.
    pub cpu_secs: f64,
}

/// What counts as the server: the processes measured together.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerSet {
    /// These processes and their descendants.
    pub pids: Vec<u32>,
    /// And this much of a PostgreSQL cluster.
    pub postgres: Option<PostgresShare>,
}

impl ServerSet {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.postgres.is_none()
    }

    /// The processes of the set right now, leaving out `exclude` and its descendants.
    pub fn pids_now(&self, exclude: &[u32]) -> BTreeSet<u32> {
        let mut pids = tree(&self.pids, exclude);
        if let Some(pg) = &self.postgres {
            pids.extend(tree(&[pg.postmaster], exclude).into_iter().filter(|&pid| {
                pid == pg.postmaster
                    || read_cmdline(pid).is_none_or(|title| {
                        postgres_backend_database(&title).is_none_or(|db| db == pg.database)
                    })
            }));
        }
        pids
    }
}

/// The processes of a PostgreSQL cluster that work for one database: the postmaster, its
/// background processes, and the client backends connected to `database` (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PostgresShare {
    /// The postmaster's pid (the first line of `postmaster.pid`, or
    /// `/var/run/postgresql/*.pid`).
    pub postmaster: u32,
    pub database: String,
}

/// The database a PostgreSQL client backend serves, from its process title (`postgres:
/// [cluster_name: ]user database host(port) activity`, or `[local]` for a Unix socket);
/// `None` for the postmaster's background processes (`postgres: 15/main: checkpointer`).
pub fn postgres_backend_database(title: &str) -> Option<&str> {
    let rest = title.strip_prefix("postgres: ")?;
    let tokens: Vec<&str> = rest.split_whitespace().collect();
    let is_host = |t: &str| {
        t == "[local]"
            || t.strip_suffix(')').and_then(|t| t.rsplit_once('(')).is_some_and(|(host, port)| {
                !host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            })
    };
    let host = tokens.iter().position(|t| is_host(t))?;
    host.checked_sub(1).map(|i| tokens[i])
}

/// Reads the processes of `set`, leaving out `exclude` and its descendants (the generator
/// itself, when the server under test is its parent, as in tests).
pub fn sample(set: &ServerSet, exclude: &[u32]) -> ProcSample {
    sample_pids(set.pids_now(exclude))
}

/// Reads the processes `roots` and their descendants, leaving out `exclude` and its
/// descendants.
pub fn sample_tree(roots: &[u32], exclude: &[u32]) -> ProcSample {
    sample_pids(tree(roots, exclude))
}

/// CPU seconds (`utime + stime`) of the processes of `set`, added up by command name: which of
/// a cluster's programs (the nodes, PostgreSQL, the broker) did the work.
pub fn cpu_by_name(set: &ServerSet, exclude: &[u32]) -> BTreeMap<String, f64> {
    let ticks = clock_ticks_per_sec() as f64;
    let mut out = BTreeMap::new();
    for stat in set.pids_now(exclude).into_iter().filter_map(read_stat) {
        *out.entry(stat.comm).or_default() += stat.cpu_ticks as f64 / ticks;
    }
    out
}

fn sample_pids(pids: BTreeSet<u32>) -> ProcSample {
    let ticks = clock_ticks_per_sec() as f64;
    let mut out = ProcSample { processes: 0, rss_bytes: 0, pss_bytes: Some(0), cpu_secs: 0.0 };
    for pid in pids {
        let Some(stat) = read_stat(pid) else { continue };
        out.processes += 1;
        out.cpu_secs += stat.cpu_ticks as f64 / ticks;
        out.rss_bytes += status_kib(pid, "VmRSS:").unwrap_or(0) * 1024;
        out.pss_bytes = match (out.pss_bytes, rollup_kib(pid, "Pss:")) {
            (Some(sum), Some(pss)) => Some(sum + pss * 1024),
            _ => None,
        };
    }
    if out.processes == 0 {
        out.pss_bytes = None;
    }
    out
}

/// CPU time of the whole machine so far, from the first line of `/proc/stat`, in seconds summed
/// over all cores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MachineCpu {
    /// Everything but idle, iowait and steal.
    pub busy: f64,
    /// Time the hypervisor gave to other guests while this one wanted to run.
    pub steal: f64,
    pub total: f64,
}

pub fn machine_cpu() -> MachineCpu {
    let text = fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .map(|rest| rest.split_whitespace().filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    let per_sec = clock_ticks_per_sec() as f64;
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    // Fields: user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user, so only the first eight add up to the total.
    let total: u64 = ticks.iter().take(8).sum();
    let (idle, steal) = (field(3) + field(4), field(7));
    MachineCpu {
        busy: total.saturating_sub(idle + steal) as f64 / per_sec,
        steal: steal as f64 / per_sec,
        total: total as f64 / per_sec,
    }
}

/// `roots` that exist, and every process whose parent chain leads to one of them without
/// passing through `exclude`.
pub fn tree(roots: &[u32], exclude: &[u32]) -> BTreeSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut found = BTreeSet::new();
    let mut todo: Vec<u32> = roots.iter().copied().filter(|pid| read_stat(*pid).is_some()).collect();
    while let Some(pid) = todo.pop() {
        if !exclude.contains(&pid) && found.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    found
}

struct Stat {
    /// The command name (`comm`, at most 15 bytes): `herald`, `postgres`, `nats-server`, `node`.
    comm: String,
    ppid: u32,
    cpu_ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`: state is field 3, ppid 4, utime 14, stime 15.
fn parse_stat(text: &str) -> Option<Stat> {
    let close = text.rfind(')')?;
    let comm = text[..close].split_once('(')?.1.to_owned();
    let rest = &text[close + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat { comm, ppid, cpu_ticks: utime + stime })
}

/// The process's command line, arguments joined by spaces (a PostgreSQL backend's title).
fn read_cmdline(pid: u32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let text = String::from_utf8_lossy(&raw);
    Some(text.split('\0').filter(|a| !a.is_empty()).collect::<Vec<_>>().join(" ").trim().to_owned())
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    kib_field(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?, key)
}

fn rollup_kib(pid: u32, key: &str) -> Option<u64> {
    kib_field(&fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?, key)
}

/// The number of a `Key:   1234 kB` line.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name() {
        let text = "4242 (my (odd) name) S 7 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 1 2 3";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat.ppid, 7);
        assert_eq!(stat.cpu_ticks, 281);
        assert_eq!(stat.comm, "my (odd) name");
    }

    #[test]
    fn kib_fields() {
        assert_eq!(kib_field("Name:\tx\nVmRSS:\t   1234 kB\n", "VmRSS:"), Some(1234));
        assert_eq!(kib_field("Rss: 5 kB\nPss:  17 kB\n", "Pss:"), Some(17));
        assert_eq!(kib_field("Rss: 5 kB\n", "Pss:"), None);
    }

    #[test]
    fn the_machine_is_measured() {
        let cpu = machine_cpu();
        assert!(cpu.total > 0.0 && cpu.busy + cpu.steal <= cpu.total, "{cpu:?}");
    }

    #[test]
    fn this_process_is_measured() {
        let me = sample_tree(&[std::process::id()], &[]);
        assert_eq!(sample_tree(&[std::process::id()], &[std::process::id()]).processes, 0);
        assert!(me.processes >= 1);
        assert!(me.rss_bytes > 0);
        // Other tests of this binary start children (`counters`' `sh -c`), which come and go
        // between two samples: the two ways of sampling must agree once the tree holds still.
        let set = ServerSet { pids: vec![std::process::id()], postgres: None };
        let agree = (0..50).any(|_| {
            let tree = sample_tree(&[std::process::id()], &[]).processes;
            let agreed = sample(&set, &[]).processes == tree;
            if !agreed {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            agreed
        });
        assert!(agree, "sample and sample_tree never counted the same processes");
    }

    #[test]
    fn postgres_titles() {
        let db = postgres_backend_database;
        assert_eq!(db("postgres: 15/main: postgres herald_b1 127.0.0.1(53412) idle"), Some("herald_b1"));
        assert_eq!(db("postgres: 15/main: postgres herald_b1 127.0.0.1(53412) INSERT"), Some("herald_b1"));
        assert_eq!(db("postgres: app other ::1(40000) idle in transaction"), Some("other"));
        assert_eq!(db("postgres: 15/main: postgres template1 [local] idle"), Some("template1"));
        assert_eq!(db("postgres: 15/main: checkpointer"), None);
        assert_eq!(db("postgres: 15/main: walwriter"), None);
        assert_eq!(db("postgres: 15/main: autovacuum launcher"), None);
        assert_eq!(db("postgres: logical replication launcher"), None);
        assert_eq!(db("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main"), None);
    }
}
