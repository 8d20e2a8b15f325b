//! The result of a run: what the JSON line holds, and the human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::procstat::{PostgresShare, ProcSample};
use crate::proto::Kind;
use crate::publish::PhaseSpec;
use crate::stats::Percentiles;
use crate::verify::DeliveryStats;

/// Everything one `herald-bench run` measured. Printed as one JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub label: String,
    /// The round of a comparison this run belongs to (`--round`; `bench/compare.sh` with
    /// `ROUNDS`). Lines without one (written before rounds existed) count as one round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// When the run started: UTC, RFC 3339, to the second (absent in older lines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    pub kind: Kind,
    /// The subscriber URL of each server (node) the clients were spread over (`sub_url`, one
    /// string, in the lines of runs before there could be several).
    #[serde(alias = "sub_url", deserialize_with = "one_or_many")]
    pub sub_urls: Vec<String>,
    /// The publish URL of each server the publishers were spread over.
    #[serde(alias = "pub_url", deserialize_with = "one_or_many")]
    pub pub_urls: Vec<String>,
    pub users: u32,
    pub clients_per_user: u32,
    pub clients: u64,
    pub workers: u32,
    pub publishers: u32,
    /// Publishes per request (`--batch`; 1: one `POST /v1/notify` each).
    #[serde(default = "one")]
    pub batch: u32,
    /// A broadcast (`--topic`): every client listened to this topic (channel, room), and every
    /// publish went to it.
    #[serde(default)]
    pub topic: Option<String>,
    /// The server processes measured (given with `--server-pid`, plus their descendants).
    pub server_pids: Vec<u32>,
    /// And the part of a PostgreSQL cluster measured with them (`--postgres-pid`).
    #[serde(default)]
    pub postgres: Option<PostgresShare>,
    pub machine: Machine,
    pub connect: ConnectResult,
    pub idle: IdleResult,
    pub phases: Vec<PhaseResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    /// 1-minute load average when the run started (it includes the previous run, if any).
    pub load_1m_at_start: f64,
    /// Share of the machine's CPU that was busy in the second before the run started: above a
    /// few percent, something else was running.
    pub busy_pct_before: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectResult {
    pub connected: u64,
    pub failed: u64,
    /// From the first connect to the last client ready.
    pub secs: f64,
    pub per_sec: f64,
    /// Each client's time from its first connect to ready (`hello`, 200, namespace joined).
    pub latency: Percentiles,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleResult {
    /// Wait after the last connection before measuring, so the server has settled.
    pub settle_secs: f64,
    pub server_before: Option<ProcSample>,
    pub server_after: Option<ProcSample>,
    /// Clients connected before the "before" sample (one per worker, see `--no-warmup`) and so
    /// not counted in the per-client figures.
    #[serde(default)]
    pub warmup_clients: u64,
    /// (RSS after − before) / clients connected after the "before" sample.
    pub rss_bytes_per_client: Option<f64>,
    /// The same with PSS (shared pages divided among processes; see [`ProcSample`]).
    pub pss_bytes_per_client: Option<f64>,
    /// Server CPU while the clients sat idle for `settle_secs`.
    pub server_cpu_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    pub name: String,
    pub spec: PhaseSpec,
    /// Time spent publishing (to the last publisher's last answer).
    pub publish_secs: f64,
    pub attempted: u64,
    pub acked: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Acknowledged publishes per second of `publish_secs`.
    pub publishes_per_sec: f64,
    pub deliveries: DeliveryStats,
    /// From the phase's start to its last arrival.
    pub delivery_secs: f64,
    /// Expected deliveries that arrived, per second of `delivery_secs`.
    pub deliveries_per_sec: f64,
    /// Publish (send time in the payload) to arrival at a subscriber.
    pub latency: Percentiles,
    /// Publish request written to answer read, at the publisher.
    pub publish_round_trip: Percentiles,
    /// Server CPU (user + system, all its processes) from the phase's start to the end of the
    /// drain wait.
    pub server_cpu_secs: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The generator's own CPU (parent and workers) over the same time.
    pub generator_cpu_secs: f64,
    /// CPU of the whole machine over the same time (all cores; 2 cores give 2 s per second),
    /// steal excluded.
    pub machine_busy_secs: f64,
    /// Time the hypervisor ran other guests while this machine wanted the CPU.
    pub steal_cpu_secs: f64,
    /// Machine CPU used neither by the server's processes nor by the generator's: other
    /// programs (builds, tests) and kernel threads. Above a second or so, the figures of the
    /// phase were disturbed.
    pub other_cpu_secs: Option<f64>,
    pub server_after: Option<ProcSample>,
    pub disconnects: u64,
    pub reconnects: u64,
    /// Streams the server ended, by reason.
    pub closes: BTreeMap<String, u64>,
    /// Change of each `--counters-cmd` counter over the phase (from before publishing to the
    /// end of the drain wait).
    #[serde(default)]
    pub counters: BTreeMap<String, f64>,
    /// The server's CPU over the same time as `server_cpu_secs`, by command name (`herald`,
    /// `postgres`, `nats-server`, `redis-server`, `node`). A process that started during the
    /// phase counts all its CPU, one that ended counts none.
    #[serde(default)]
    pub server_cpu_by_name: BTreeMap<String, f64>,
    /// A broadcast's per-message figures (`--topic`).
    #[serde(default)]
    pub broadcast: Option<BroadcastResult>,
}

/// How long each message of a broadcast phase took to reach every client listening.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BroadcastResult {
    /// Acknowledged publishes that reached at least one client: the percentiles are over these
    /// (one value per message, not per delivery).
    pub messages: u64,
    /// Per message: from its send time to its arrival at the first client.
    pub to_first: Percentiles,
    /// Per message: from its send time to its arrival at the last client that got it. With
    /// nothing lost (`deliveries.lost`), the time until every client had it.
    pub to_last: Percentiles,
}

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

const KIB: f64 = 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// `value` with `digits` decimals and its integer part in groups of three: `46,833`,
/// `1,234.5`, `0.323`.
pub fn number(value: f64, digits: usize) -> String {
    let text = format!("{:.digits$}", value.abs());
    let (integer, fraction) = text.split_at(text.find('.').unwrap_or(text.len()));
    let mut grouped = String::with_capacity(text.len() + integer.len() / 3 + 1);
    if value < 0.0 && text.bytes().any(|b| matches!(b, b'1'..=b'9')) {
        grouped.push('-');
    }
    for (i, digit) in integer.chars().enumerate() {
        if i > 0 && (integer.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped.push_str(fraction);
    grouped
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

/// Formats rows as a table: the first row is the header; columns after the first are
/// right-aligned.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(out, "  {}{cell}", " ".repeat(pad));
            }
        }
        out.push('\n');
        if i == 0 {
            let total = widths.iter().sum::<usize>() + 2 * columns.saturating_sub(1);
            out.push_str(&"-".repeat(total));
            out.push('\n');
        }
    }
    out
}

impl RunResult {
    /// The human report.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let label = match (self.label.as_str(), self.round) {
            ("", _) => String::new(),
            (label, None) => format!(" [{label}]"),
            (label, Some(round)) => format!(" [{label}, round {round}]"),
        };
        let _ = writeln!(
            out,
            "herald-bench{label}: {} on {} — {} users × {} = {} clients over {} workers, {} publishers{}{} to {}",
            self.kind.name(),
            self.sub_urls.join(" "),
            self.users,
            self.clients_per_user,
            self.clients,
            self.workers,
            self.publishers,
            if self.batch > 1 { format!(" (batches of {})", self.batch) } else { String::new() },
            match &self.topic {
                Some(topic) =>
                    format!(", broadcast: every client listens to {topic:?}, every publish goes to it,"),
                None => String::new(),
            },
            self.pub_urls.join(" "),
        );
        if let Some(pg) = &self.postgres {
            let _ = writeln!(
                out,
                "server: pids {:?} and their descendants, PostgreSQL's postmaster {} with its background processes and the backends of database {}",
                self.server_pids, pg.postmaster, pg.database
            );
        }
        let _ = writeln!(
            out,
            "machine: {} cores, {:.1}% busy in the second before the run, load average {:.2}",
            self.machine.nproc, self.machine.busy_pct_before, self.machine.load_1m_at_start
        );
        let c = &self.connect;
        let _ = writeln!(
            out,
            "connect: {} connected, {} failed in {:.2} s ({:.0}/s); per client p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
            c.connected,
            c.failed,
            c.secs,
            c.per_sec,
            c.latency.p50_ms,
            c.latency.p99_ms,
            c.latency.max_ms,
            c.first_error.as_ref().map(|e| format!(" (first error: {e})")).unwrap_or_default(),
        );
        let i = &self.idle;
        if let (Some(before), Some(after)) = (&i.server_before, &i.server_after) {
            let _ = writeln!(
                out,
                "idle: server ({} processes) RSS {:.1} → {:.1} MiB = {} KiB per client; PSS {} → {} MiB = {} KiB per client; CPU {} s in {:.1} s{}",
                after.processes,
                before.rss_bytes as f64 / MIB,
                after.rss_bytes as f64 / MIB,
                opt(i.rss_bytes_per_client.map(|b| b / KIB), 2),
                opt(before.pss_bytes.map(|b| b as f64 / MIB), 1),
                opt(after.pss_bytes.map(|b| b as f64 / MIB), 1),
                opt(i.pss_bytes_per_client.map(|b| b / KIB), 2),
                opt(i.server_cpu_secs, 2),
                i.settle_secs,
                match i.warmup_clients {
                    0 => String::new(),
                    n => format!(" (\"before\" with {n} warm-up clients connected)"),
                },
            );
        } else {
            let _ = writeln!(out, "idle: no server process measured (give --server-pid)");
        }
        let mut rows = vec![
            [
                "phase",
                "pub/s",
                "deliv/s",
                "acked",
                "err",
                "expected",
                "lost",
                "dup",
                "misr",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "srv CPU s",
                "µs/deliv",
                "gen CPU s",
                "other s",
                "reconn",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for p in &self.phases {
            let d = &p.deliveries;
            rows.push(vec![
                p.name.clone(),
                format!("{:.0}", p.publishes_per_sec),
                format!("{:.0}", p.deliveries_per_sec),
                p.acked.to_string(),
                p.errors.to_string(),
                d.expected.to_string(),
                d.lost.to_string(),
                d.duplicated.to_string(),
                d.misrouted.to_string(),
                format!("{:.3}", p.latency.p50_ms),
                format!("{:.3}", p.latency.p90_ms),
                format!("{:.3}", p.latency.p99_ms),
                format!("{:.3}", p.latency.p999_ms),
                format!("{:.3}", p.latency.max_ms),
                opt(p.server_cpu_secs, 2),
                opt(p.server_cpu_us_per_delivery, 2),
                format!("{:.2}", p.generator_cpu_secs),
                opt(p.other_cpu_secs, 2),
                p.reconnects.to_string(),
            ]);
        }
        out.push_str(&table(&rows));
        if self.phases.iter().any(|p| p.broadcast.is_some()) {
            out.push_str(&self.broadcast_table());
        }
        for p in &self.phases {
            let mut notes = Vec::new();
            if let Some(e) = &p.first_error {
                notes.push(format!("first publish error: {e}"));
            }
            if p.deliveries.unacked + p.deliveries.stray > 0 {
                notes.push(format!(
                    "{} arrivals of unacknowledged publishes, {} late from an earlier phase",
                    p.deliveries.unacked, p.deliveries.stray
                ));
            }
            if !p.closes.is_empty() {
                notes.push(format!("streams ended by the server: {:?}", p.closes));
            }
            if p.server_cpu_by_name.len() > 1 {
                let split: Vec<String> =
                    p.server_cpu_by_name.iter().map(|(name, cpu)| format!("{name} {cpu:.2} s")).collect();
                notes.push(format!("server CPU by program: {}", split.join(", ")));
            }
            if !p.counters.is_empty() {
                let secs = p.delivery_secs.max(1e-9);
                let counters: Vec<String> = p
                    .counters
                    .iter()
                    .map(|(name, d)| format!("{name} +{d:.0} ({:.0}/s)", d / secs))
                    .collect();
                notes.push(format!("counters: {}", counters.join(", ")));
            }
            if p.steal_cpu_secs >= 0.1 {
                notes.push(format!("{:.2} s of CPU stolen by the hypervisor", p.steal_cpu_secs));
            }
            notes.push(format!(
                "publish round trip p50 {:.3} ms, p99 {:.3} ms",
                p.publish_round_trip.p50_ms, p.publish_round_trip.p99_ms
            ));
            let _ = writeln!(out, "{}: {}", p.name, notes.join("; "));
        }
        out
    }

    /// Per broadcast phase: each message's time to its first and last client, per delivery CPU,
    /// and the clients that missed or doubled a message.
    fn broadcast_table(&self) -> String {
        let mut rows = vec![
            [
                "broadcast phase",
                "messages",
                "to first p50 ms",
                "to last p50 ms",
                "to last p99 ms",
                "to last max ms",
                "deliv/s",
                "µs/deliv",
                "lost",
                "dup",
                "tabs short",
                "tabs dup",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for p in &self.phases {
            let Some(b) = &p.broadcast else { continue };
            let d = &p.deliveries;
            rows.push(vec![
                p.name.clone(),
                b.messages.to_string(),
                format!("{:.3}", b.to_first.p50_ms),
                format!("{:.3}", b.to_last.p50_ms),
                format!("{:.3}", b.to_last.p99_ms),
                format!("{:.3}", b.to_last.max_ms),
                format!("{:.0}", p.deliveries_per_sec),
                opt(p.server_cpu_us_per_delivery, 2),
                d.lost.to_string(),
                d.duplicated.to_string(),
                d.clients_short.to_string(),
                d.clients_duplicated.to_string(),
            ]);
        }
        table(&rows)
    }

    /// Whether some phase saw more than `other_limit` seconds of CPU used by other programs, or
    /// more than `steal_limit` stolen from this machine by the hypervisor (both skew every
    /// figure, latency percentiles the most).
    pub fn disturbed(&self, other_limit: Option<f64>, steal_limit: Option<f64>) -> bool {
        self.phases.iter().any(|p| {
            other_limit.is_some_and(|limit| p.other_cpu_secs.is_some_and(|other| other > limit))
                || steal_limit.is_some_and(|limit| p.steal_cpu_secs > limit)
        })
    }

    /// Whether every phase delivered every acknowledged publish exactly once, to the right
    /// clients, and every client connected.
    pub fn clean(&self) -> bool {
        self.connect.failed == 0
            && self.phases.iter().all(|p| {
                p.deliveries.lost == 0 && p.deliveries.duplicated == 0 && p.deliveries.misrouted == 0
            })
    }
}

/// The `batch` of reports written before `--batch` existed.
fn one() -> u32 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["name".to_owned(), "n".to_owned()],
            vec!["a".to_owned(), "1000".to_owned()],
            vec!["longer".to_owned(), "7".to_owned()],
        ];
        assert_eq!(table(&rows), "name       n\n------------\na       1000\nlonger     7\n");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(number(46_833.4, 0), "46,833");
        assert_eq!(number(1_234_567.891, 2), "1,234,567.89");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(number(0.3234, 3), "0.323");
        assert_eq!(number(-0.79, 2), "-0.79");
        assert_eq!(number(-12_345.0, 0), "-12,345");
        assert_eq!(number(-0.001, 2), "0.00", "no minus sign on a zero");
    }
}
