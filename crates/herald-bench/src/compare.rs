//! `herald-bench compare`: one table from the JSON lines of several runs, a column per run
//! label, and ratio (and difference) columns between labels (for example Herald/Nchan).
//!
//! Runs of a broadcast (`--topic`) get rows of their own, per phase by name (a single publish,
//! then each rate): each message's time to its first and last client, CPU per delivery, losses.

use std::path::PathBuf;

use anyhow::{Context as _, ensure};

use crate::report::{PhaseResult, RunResult, table};

/// Options of `herald-bench compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Files of JSON lines written by `herald-bench run` (`--json-out`, or its last stdout line).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Only these labels, in this order (comma-separated); default: every label, as found.
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// A ratio column `A/B` (labels): A's value divided by B's. Repeatable.
    #[arg(long = "ratio")]
    pub ratios: Vec<String>,
    /// A difference column `A/B` (labels): A's value minus B's, one digit more precise (for
    /// example the memory per client with a topic less that without). Repeatable.
    #[arg(long = "difference")]
    pub differences: Vec<String>,
    /// Only the rows whose name starts with one of these (comma-separated), e.g. `idle:`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A title printed above the table.
    #[arg(long, default_value = "")]
    pub title: String,
}

/// How a row reads its value from a run (`None`: the run does not have it).
type ValueOf<'a> = Box<dyn Fn(&RunResult) -> Option<f64> + 'a>;

/// A row of the table: a name, its precision, which way is better, and its value in a run.
struct Row<'a> {
    name: String,
    digits: usize,
    better: Better,
    value: ValueOf<'a>,
}

impl From<Metric> for Row<'_> {
    fn from(m: Metric) -> Self {
        Self { name: m.name.to_owned(), digits: m.digits, better: m.better, value: Box::new(m.value) }
    }
}

/// Whether a fixed metric reads a phase by its mode (`steady`, `max`, `burst`): a broadcast's
/// phases have rows of their own, by name ([`broadcast_rows`]).
fn is_phase_metric(name: &str) -> bool {
    ["steady:", "max:", "burst:"].iter().any(|mode| name.starts_with(mode))
}

/// The rows of each broadcast phase, by phase name, in the order the runs have them.
fn broadcast_rows<'a>(runs: &[&'a RunResult]) -> Vec<Row<'a>> {
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        for p in run.phases.iter().filter(|p| p.broadcast.is_some()) {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
    }
    type Get = fn(&PhaseResult) -> Option<f64>;
    let per_phase: [(&str, usize, Better, Get); 11] = [
        ("messages", 0, Better::Neither, |p| p.broadcast.as_ref().map(|b| b.messages as f64)),
        ("publishes/s", 1, Better::Neither, |p| Some(p.publishes_per_sec)),
        ("time to first tab p50 (ms)", 3, Better::Lower, |p| p.broadcast.as_ref().map(|b| b.to_first.p50_ms)),
        ("time to last tab p50 (ms)", 3, Better::Lower, |p| p.broadcast.as_ref().map(|b| b.to_last.p50_ms)),
        ("time to last tab p99 (ms)", 3, Better::Lower, |p| p.broadcast.as_ref().map(|b| b.to_last.p99_ms)),
        ("time to last tab max (ms)", 3, Better::Lower, |p| p.broadcast.as_ref().map(|b| b.to_last.max_ms)),
        ("deliveries/s", 0, Better::Higher, |p| Some(p.deliveries_per_sec)),
        ("server CPU per delivery (µs)", 2, Better::Lower, |p| p.server_cpu_us_per_delivery),
        ("lost", 0, Better::Lower, |p| Some(p.deliveries.lost as f64)),
        ("duplicated", 0, Better::Lower, |p| Some(p.deliveries.duplicated as f64)),
        ("other CPU (s)", 2, Better::Neither, |p| p.other_cpu_secs),
    ];
    let mut rows = Vec::new();
    for name in names {
        for (what, digits, better, get) in per_phase {
            let name = name.to_owned();
            rows.push(Row {
                name: format!("{name}: {what}"),
                digits,
                better,
                value: Box::new(move |r: &RunResult| r.phases.iter().find(|p| p.name == name).and_then(get)),
            });
        }
    }
    rows
}

/// Which way a metric is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
    Neither,
}

struct Metric {
    name: &'static str,
    digits: usize,
    better: Better,
    value: fn(&RunResult) -> Option<f64>,
}

/// A counter's change over a phase (`--counters-cmd`), if it was read.
fn counter(p: &PhaseResult, name: &str) -> Option<f64> {
    p.counters.get(name).copied()
}

/// Server CPU per delivery (µs) of the programs of the server whose command names `names` holds.
fn cpu_us_per_delivery_of(p: &PhaseResult, names: &[&str]) -> Option<f64> {
    let cpu: f64 =
        p.server_cpu_by_name.iter().filter(|(n, _)| names.contains(&n.as_str())).map(|(_, c)| c).sum();
    (p.deliveries.delivered > 0 && p.server_cpu_by_name.keys().any(|n| names.contains(&n.as_str())))
        .then(|| cpu * 1e6 / p.deliveries.delivered as f64)
}

/// Command names of the servers measured (Herald, Socket.IO), of PostgreSQL, of the brokers.
const SERVER_NAMES: [&str; 2] = ["herald", "node"];
const POSTGRES_NAMES: [&str; 1] = ["postgres"];
const BROKER_NAMES: [&str; 2] = ["nats-server", "redis-server"];

/// Messages the nodes published to the broker, per acknowledged publish.
fn bus_msgs_per_publish(p: &PhaseResult) -> Option<f64> {
    let published = counter(p, "bus_in_msgs")?;
    (p.acked > 0).then(|| published / p.acked as f64)
}

/// A counter summed over a cluster's nodes (`nodes_…`, from each node's `GET /v1/cluster`),
/// per acknowledged publish.
fn nodes_per_publish(p: &PhaseResult, name: &str) -> Option<f64> {
    let total = counter(p, name)?;
    (p.acked > 0).then(|| total / p.acked as f64)
}

/// Bytes the nodes' buses sent and received (their own count), per second and per node.
fn nodes_bytes_per_node_sec(r: &RunResult, p: &PhaseResult) -> Option<f64> {
    let total = counter(p, "nodes_bytes_in")? + counter(p, "nodes_bytes_out")?;
    (p.delivery_secs > 0.0).then(|| total / p.delivery_secs / r.sub_urls.len().max(1) as f64)
}

/// Bytes through the broker in both directions (in: published by the nodes; out: sent by the
/// broker to the nodes), per acknowledged publish.
fn bus_bytes_per_publish(p: &PhaseResult) -> Option<f64> {
    let total = counter(p, "bus_in_bytes")? + counter(p, "bus_out_bytes")?;
    (p.acked > 0).then(|| total / p.acked as f64)
}

/// The same per second and per node: what one node's link to the broker carried, on average.
fn bus_bytes_per_node_sec(r: &RunResult, p: &PhaseResult) -> Option<f64> {
    let total = counter(p, "bus_in_bytes")? + counter(p, "bus_out_bytes")?;
    (p.delivery_secs > 0.0).then(|| total / p.delivery_secs / r.sub_urls.len().max(1) as f64)
}

fn phase<'a>(run: &'a RunResult, mode: &str) -> Option<&'a PhaseResult> {
    run.phases.iter().find(|p| p.spec.mode() == mode)
}

macro_rules! phase_metric {
    ($mode:literal, $name:literal, $digits:expr, $better:expr, |$p:ident| $e:expr) => {
        Metric { name: $name, digits: $digits, better: $better, value: |r| phase(r, $mode).and_then(|$p| $e) }
    };
}

fn metrics() -> Vec<Metric> {
    use Better::*;
    vec![
        Metric {
            name: "clients connected",
            digits: 0,
            better: Neither,
            value: |r| Some(r.connect.connected as f64),
        },
        Metric { name: "clients failed", digits: 0, better: Lower, value: |r| Some(r.connect.failed as f64) },
        Metric {
            name: "connect rate (clients/s)",
            digits: 0,
            better: Higher,
            value: |r| Some(r.connect.per_sec),
        },
        Metric {
            name: "connect p99 (ms)",
            digits: 1,
            better: Lower,
            value: |r| Some(r.connect.latency.p99_ms),
        },
        Metric {
            name: "idle: server RSS per client (KiB)",
            digits: 2,
            better: Lower,
            value: |r| r.idle.rss_bytes_per_client.map(|b| b / 1024.0),
        },
        Metric {
            name: "idle: server PSS per client (KiB)",
            digits: 2,
            better: Lower,
            value: |r| r.idle.pss_bytes_per_client.map(|b| b / 1024.0),
        },
        Metric {
            name: "idle: server RSS with clients (MiB)",
            digits: 1,
            better: Lower,
            value: |r| r.idle.server_after.map(|s| s.rss_bytes as f64 / 1048576.0),
        },
        phase_metric!("steady", "steady: publishes/s", 0, Neither, |p| Some(p.publishes_per_sec)),
        phase_metric!("steady", "steady: latency p50 (ms)", 3, Lower, |p| Some(p.latency.p50_ms)),
        phase_metric!("steady", "steady: latency p90 (ms)", 3, Lower, |p| Some(p.latency.p90_ms)),
        phase_metric!("steady", "steady: latency p99 (ms)", 3, Lower, |p| Some(p.latency.p99_ms)),
        phase_metric!("steady", "steady: latency p99.9 (ms)", 3, Lower, |p| Some(p.latency.p999_ms)),
        phase_metric!("steady", "steady: latency max (ms)", 3, Lower, |p| Some(p.latency.max_ms)),
        phase_metric!("steady", "steady: publish round trip p50 (ms)", 3, Lower, |p| Some(
            p.publish_round_trip.p50_ms
        )),
        phase_metric!("steady", "steady: publish round trip p99 (ms)", 3, Lower, |p| Some(
            p.publish_round_trip.p99_ms
        )),
        phase_metric!("steady", "steady: server CPU per delivery (µs)", 2, Lower, |p| p
            .server_cpu_us_per_delivery),
        phase_metric!("steady", "steady: … of which Herald or Socket.IO (µs)", 2, Lower, |p| {
            cpu_us_per_delivery_of(p, &SERVER_NAMES)
        }),
        phase_metric!("steady", "steady: … of which PostgreSQL (µs)", 2, Lower, |p| {
            cpu_us_per_delivery_of(p, &POSTGRES_NAMES)
        }),
        phase_metric!("steady", "steady: … of which the broker (µs)", 2, Lower, |p| {
            cpu_us_per_delivery_of(p, &BROKER_NAMES)
        }),
        phase_metric!("steady", "steady: messages to the bus per publish", 2, Lower, |p| {
            bus_msgs_per_publish(p)
        }),
        phase_metric!("steady", "steady: bus bytes per publish (in + out)", 0, Lower, |p| {
            bus_bytes_per_publish(p)
        }),
        phase_metric!("steady", "steady: envelopes sent per publish (nodes' count)", 2, Lower, |p| {
            nodes_per_publish(p, "nodes_envelopes_out")
        }),
        phase_metric!("steady", "steady: other CPU (s)", 2, Neither, |p| p.other_cpu_secs),
        phase_metric!("steady", "steady: lost", 0, Lower, |p| Some(p.deliveries.lost as f64)),
        phase_metric!("steady", "steady: duplicated", 0, Lower, |p| Some(p.deliveries.duplicated as f64)),
        phase_metric!("max", "max: publishes/s", 0, Higher, |p| Some(p.publishes_per_sec)),
        phase_metric!("max", "max: deliveries/s", 0, Higher, |p| Some(p.deliveries_per_sec)),
        phase_metric!("max", "max: latency p50 (ms)", 3, Lower, |p| Some(p.latency.p50_ms)),
        phase_metric!("max", "max: latency p90 (ms)", 3, Lower, |p| Some(p.latency.p90_ms)),
        phase_metric!("max", "max: latency p99 (ms)", 3, Lower, |p| Some(p.latency.p99_ms)),
        phase_metric!("max", "max: latency p99.9 (ms)", 3, Lower, |p| Some(p.latency.p999_ms)),
        phase_metric!("max", "max: latency max (ms)", 3, Lower, |p| Some(p.latency.max_ms)),
        phase_metric!("max", "max: publish round trip p99 (ms)", 3, Lower, |p| Some(
            p.publish_round_trip.p99_ms
        )),
        phase_metric!("max", "max: server CPU (s)", 2, Neither, |p| p.server_cpu_secs),
        phase_metric!("max", "max: server CPU per delivery (µs)", 2, Lower, |p| p
            .server_cpu_us_per_delivery),
        phase_metric!("max", "max: … of which Herald or Socket.IO (µs)", 2, Lower, |p| {
            cpu_us_per_delivery_of(p, &SERVER_NAMES)
        }),
        phase_metric!("max", "max: … of which PostgreSQL (µs)", 2, Lower, |p| {
            cpu_us_per_delivery_of(p, &POSTGRES_NAMES)
        }),
        phase_metric!("max", "max: … of which the broker (µs)", 2, Lower, |p| {
            cpu_us_per_delivery_of(p, &BROKER_NAMES)
        }),
        Metric {
            name: "max: server processes counted",
            digits: 0,
            better: Neither,
            value: |r| phase(r, "max").and_then(|p| p.server_after).map(|s| s.processes as f64),
        },
        phase_metric!("max", "max: messages to the bus per publish", 2, Lower, |p| bus_msgs_per_publish(p)),
        phase_metric!("max", "max: bus bytes per publish (in + out)", 0, Lower, |p| bus_bytes_per_publish(p)),
        phase_metric!("max", "max: envelopes sent per publish (nodes' count)", 2, Lower, |p| {
            nodes_per_publish(p, "nodes_envelopes_out")
        }),
        phase_metric!("max", "max: envelopes received per publish (nodes' count)", 2, Lower, |p| {
            nodes_per_publish(p, "nodes_envelopes_in")
        }),
        phase_metric!("max", "max: own echoes dropped per publish (nodes' count)", 2, Lower, |p| {
            nodes_per_publish(p, "nodes_echoes")
        }),
        phase_metric!("max", "max: notifications repaired from the store", 0, Neither, |p| counter(
            p,
            "nodes_repaired"
        )),
        Metric {
            name: "max: bus MB/s per node, nodes' count (in + out)",
            digits: 2,
            better: Neither,
            value: |r| phase(r, "max").and_then(|p| nodes_bytes_per_node_sec(r, p)).map(|b| b / 1e6),
        },
        Metric {
            name: "max: bus MB/s per node, broker's count (in + out)",
            digits: 2,
            better: Neither,
            value: |r| phase(r, "max").and_then(|p| bus_bytes_per_node_sec(r, p)).map(|b| b / 1e6),
        },
        phase_metric!("max", "max: generator CPU (s)", 2, Neither, |p| Some(p.generator_cpu_secs)),
        phase_metric!("max", "max: other CPU (s)", 2, Neither, |p| p.other_cpu_secs),
        phase_metric!("max", "max: CPU stolen by the hypervisor (s)", 2, Neither, |p| Some(p.steal_cpu_secs)),
        phase_metric!("max", "max: publish errors", 0, Lower, |p| Some(p.errors as f64)),
        phase_metric!("max", "max: lost", 0, Lower, |p| Some(p.deliveries.lost as f64)),
        phase_metric!("max", "max: duplicated", 0, Lower, |p| Some(p.deliveries.duplicated as f64)),
        phase_metric!("max", "max: server RSS after (MiB)", 1, Lower, |p| p
            .server_after
            .map(|s| s.rss_bytes as f64 / 1048576.0)),
        phase_metric!("burst", "burst: publishes", 0, Neither, |p| Some(p.acked as f64)),
        phase_metric!("burst", "burst: deliveries", 0, Neither, |p| Some(p.deliveries.delivered as f64)),
        phase_metric!("burst", "burst: time to deliver all (s)", 3, Lower, |p| Some(p.delivery_secs)),
        phase_metric!("burst", "burst: deliveries/s", 0, Higher, |p| Some(p.deliveries_per_sec)),
        phase_metric!("burst", "burst: latency p50 (ms)", 3, Lower, |p| Some(p.latency.p50_ms)),
        phase_metric!("burst", "burst: latency p99 (ms)", 3, Lower, |p| Some(p.latency.p99_ms)),
        phase_metric!("burst", "burst: latency max (ms)", 3, Lower, |p| Some(p.latency.max_ms)),
        phase_metric!("burst", "burst: server CPU per delivery (µs)", 2, Lower, |p| p
            .server_cpu_us_per_delivery),
        phase_metric!("burst", "burst: lost", 0, Lower, |p| Some(p.deliveries.lost as f64)),
        phase_metric!("burst", "burst: duplicated", 0, Lower, |p| Some(p.deliveries.duplicated as f64)),
        Metric {
            name: "machine busy before the run (%)",
            digits: 1,
            better: Neither,
            value: |r| Some(r.machine.busy_pct_before),
        },
    ]
}

/// Reads the runs in `files` (one JSON object per line; other lines are skipped).
pub fn read_runs(files: &[PathBuf]) -> anyhow::Result<Vec<RunResult>> {
    let mut runs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
        for line in text.lines().filter(|l| l.starts_with('{')) {
            runs.push(
                serde_json::from_str(line).with_context(|| format!("a bad line in {}", file.display()))?,
            );
        }
    }
    Ok(runs)
}

/// The comparison table.
pub fn render(runs: &[RunResult], args: &CompareArgs) -> anyhow::Result<String> {
    let mut labels: Vec<String> = args.columns.clone();
    if labels.is_empty() {
        for run in runs {
            if !labels.contains(&run.label) {
                labels.push(run.label.clone());
            }
        }
    }
    // The last run of each label wins (a re-run replaces an earlier one).
    let column = |label: &str| runs.iter().rev().find(|r| r.label == label);
    let pairs = |specs: &[String], option: &str| {
        specs
            .iter()
            .map(|spec| {
                let (a, b) =
                    spec.split_once('/').with_context(|| format!("--{option} {spec}: expected A/B"))?;
                ensure!(
                    labels.iter().any(|l| l == a) && labels.iter().any(|l| l == b),
                    "--{option} {spec}: unknown label"
                );
                Ok((a.to_owned(), b.to_owned()))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let ratios = pairs(&args.ratios, "ratio")?;
    let differences = pairs(&args.differences, "difference")?;
    let shown: Vec<&RunResult> = labels.iter().filter_map(|l| column(l)).collect();
    // Columns that are all broadcasts: their phases are named rows, not the fixed ones by mode.
    let broadcast = !shown.is_empty() && shown.iter().all(|r| r.topic.is_some());
    let mut all: Vec<Row<'_>> =
        metrics().into_iter().filter(|m| !(broadcast && is_phase_metric(m.name))).map(Row::from).collect();
    all.extend(broadcast_rows(&shown));
    let mut header = vec!["metric".to_owned()];
    header.extend(labels.iter().cloned());
    header.extend(ratios.iter().map(|(a, b)| format!("{a}/{b}")));
    header.extend(differences.iter().map(|(a, b)| format!("{a} − {b}")));
    header.push("better".to_owned());
    let mut rows = vec![header];
    for metric in all {
        if !args.only.is_empty() && !args.only.iter().any(|prefix| metric.name.starts_with(prefix.as_str())) {
            continue;
        }
        let value = |label: &str| column(label).and_then(|r| (metric.value)(r));
        let values: Vec<Option<f64>> = labels.iter().map(|l| value(l)).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let mut row = vec![metric.name.clone()];
        row.extend(values.iter().map(|v| match v {
            Some(v) => format!("{v:.prec$}", prec = metric.digits),
            None => "-".to_owned(),
        }));
        for (a, b) in &ratios {
            row.push(match (value(a), value(b)) {
                (Some(a), Some(b)) if b != 0.0 && !matches!(metric.better, Better::Neither) => {
                    format!("{:.2}×", a / b)
                }
                _ => String::new(),
            });
        }
        for (a, b) in &differences {
            row.push(match (value(a), value(b)) {
                (Some(a), Some(b)) => format!("{:+.prec$}", a - b, prec = metric.digits + 1),
                _ => String::new(),
            });
        }
        row.push(
            match metric.better {
                Better::Higher => "higher",
                Better::Lower => "lower",
                Better::Neither => "",
            }
            .to_owned(),
        );
        rows.push(row);
    }
    let mut out = String::new();
    if !args.title.is_empty() {
        out.push_str(&args.title);
        out.push('\n');
    }
    out.push_str(&table(&rows));
    Ok(out)
}
