//! `herald-bench compare`: one table from the JSON lines of several runs, a column per run
//! label, and ratio (and difference) columns between labels (for example Herald/Nchan).
//!
//! **Rounds.** A label's runs may belong to several rounds (`--round`, `bench/compare.sh` with
//! `ROUNDS`): each round counts with its last run (a disturbed attempt repeated replaces the
//! earlier one), and each cell shows the median of the rounds, with their range in brackets
//! when they differ. Lines without a round (older files) are one round: the last run of each
//! label, as before rounds existed. Ratios divide medians.
//!
//! **The floor** (`--floor LABEL`, `herald-floor`): rows giving each server's throughput and CPU
//! per delivery as a multiple of the floor's. **Charts** (`--svg DIR`, drawn by [`crate::charts`]):
//! deliveries/s and CPU per delivery with the floor marked, latency percentiles at the steady
//! rate, idle memory per tab with its goal marked.
//!
//! Runs of a broadcast (`--topic`) get rows of their own, per phase by name (a single publish,
//! then each rate): each message's time to its first and last client, CPU per delivery, losses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};

use crate::charts::{self, Bar, Chart, Group, Marker, Series};
use crate::publish::PhaseSpec;
use crate::report::{PhaseResult, RunResult, number, table};
use crate::stats::Spread;

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
    /// The label of the floor (`herald-floor`): rows add each label's deliveries/s and server
    /// CPU per delivery as a multiple of this one's, and the charts mark its figures.
    #[arg(long)]
    pub floor: Option<String>,
    /// Also write the comparison as SVG charts into this directory (created if missing).
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Rows followed by a row of each label's value as a multiple of the floor's (`--floor`).
const FLOOR_MULTIPLE_ROWS: [&str; 3] =
    ["steady: server CPU per delivery (µs)", "max: deliveries/s", "max: server CPU per delivery (µs)"];

/// Idle memory per SSE tab that Herald aims to stay under (issue 14), marked on its chart.
pub const IDLE_KIB_PER_TAB_GOAL: f64 = 2.0;

/// Latency percentiles above which (largest ÷ smallest) the latency chart's axis is a log one:
/// a linear axis would flatten the p50s into slivers.
const LOG_AXIS_SPREAD_MIN: f64 = 20.0;

/// The runs shown: per label (a column), the last run of each of its rounds, rounds in order.
struct Shown<'a> {
    labels: Vec<String>,
    rounds: Vec<Vec<&'a RunResult>>,
}

impl<'a> Shown<'a> {
    /// `columns`' labels, or every label in the order first found.
    fn new(runs: &'a [RunResult], columns: &[String]) -> Self {
        let mut labels: Vec<String> = columns.to_vec();
        if labels.is_empty() {
            for run in runs {
                if !labels.contains(&run.label) {
                    labels.push(run.label.clone());
                }
            }
        }
        let rounds = labels
            .iter()
            .map(|label| {
                // A later run of the same round replaces an earlier one (a repeated attempt).
                let mut by_round: BTreeMap<Option<u32>, &RunResult> = BTreeMap::new();
                for run in runs.iter().filter(|r| &r.label == label) {
                    by_round.insert(run.round, run);
                }
                by_round.into_values().collect()
            })
            .collect();
        Self { labels, rounds }
    }

    fn runs_of(&self, label: &str) -> &[&'a RunResult] {
        self.labels.iter().position(|l| l == label).map_or(&[], |i| &self.rounds[i])
    }

    /// `value` over the rounds of `label`.
    fn spread(&self, label: &str, value: impl Fn(&RunResult) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.runs_of(label).iter().filter_map(|r| value(r)))
    }

    fn all(&self) -> Vec<&'a RunResult> {
        self.rounds.iter().flatten().copied().collect()
    }

    fn rounds_max(&self) -> usize {
        self.rounds.iter().map(Vec::len).max().unwrap_or(0)
    }

    fn check_label(&self, label: &str, option: &str) -> anyhow::Result<()> {
        ensure!(self.labels.iter().any(|l| l == label), "--{option} {label}: unknown label");
        Ok(())
    }
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
    let shown = Shown::new(runs, &args.columns);
    let labels = &shown.labels;
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
    if let Some(floor) = &args.floor {
        shown.check_label(floor, "floor")?;
    }
    let all_runs = shown.all();
    // Columns that are all broadcasts: their phases are named rows, not the fixed ones by mode.
    let broadcast = !all_runs.is_empty() && all_runs.iter().all(|r| r.topic.is_some());
    let mut all: Vec<Row<'_>> =
        metrics().into_iter().filter(|m| !(broadcast && is_phase_metric(m.name))).map(Row::from).collect();
    all.extend(broadcast_rows(&all_runs));
    let mut header = vec!["metric".to_owned()];
    header.extend(labels.iter().cloned());
    header.extend(ratios.iter().map(|(a, b)| format!("{a}/{b}")));
    header.extend(differences.iter().map(|(a, b)| format!("{a} − {b}")));
    header.push("better".to_owned());
    let better_word = |better: Better| {
        match better {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::Neither => "",
        }
        .to_owned()
    };
    let mut rows = vec![header];
    for metric in all {
        if !args.only.is_empty() && !args.only.iter().any(|prefix| metric.name.starts_with(prefix.as_str())) {
            continue;
        }
        let spread = |label: &str| shown.spread(label, &*metric.value);
        let median = |label: &str| spread(label).map(|s| s.median);
        let spreads: Vec<Option<Spread>> = labels.iter().map(|l| spread(l)).collect();
        if spreads.iter().all(Option::is_none) {
            continue;
        }
        let mut row = vec![metric.name.clone()];
        row.extend(spreads.iter().map(|s| match s {
            Some(s) => {
                let (median, min, max) = (
                    number(s.median, metric.digits),
                    number(s.min, metric.digits),
                    number(s.max, metric.digits),
                );
                // A range only where the rounds differ at the row's precision.
                if min == max { median } else { format!("{median} [{min}–{max}]") }
            }
            None => "-".to_owned(),
        }));
        for (a, b) in &ratios {
            row.push(match (median(a), median(b)) {
                (Some(a), Some(b)) if b != 0.0 && !matches!(metric.better, Better::Neither) => {
                    format!("{:.2}×", a / b)
                }
                _ => String::new(),
            });
        }
        for (a, b) in &differences {
            row.push(match (median(a), median(b)) {
                (Some(a), Some(b)) => format!("{:+.prec$}", a - b, prec = metric.digits + 1),
                _ => String::new(),
            });
        }
        row.push(better_word(metric.better));
        rows.push(row);
        if let Some(floor) =
            args.floor.as_deref().filter(|_| FLOOR_MULTIPLE_ROWS.contains(&metric.name.as_str()))
        {
            let floor_value = median(floor).filter(|v| *v > 0.0);
            let name = metric.name.split(" (").next().unwrap_or(&metric.name);
            let mut row = vec![format!("{name}, × the floor's")];
            row.extend(labels.iter().map(|l| match (median(l), floor_value) {
                (Some(v), Some(f)) => format!("{:.2}×", v / f),
                _ => "-".to_owned(),
            }));
            row.extend(std::iter::repeat_n(String::new(), ratios.len() + differences.len()));
            row.push(better_word(metric.better));
            rows.push(row);
        }
    }
    let mut out = String::new();
    if !args.title.is_empty() {
        out.push_str(&args.title);
        out.push('\n');
    }
    if shown.rounds_max() > 1 {
        let counts: Vec<String> =
            labels.iter().zip(&shown.rounds).map(|(l, r)| format!("{l} {}", r.len())).collect();
        out.push_str(&format!(
            "Each value is the median of the rounds, [lowest–highest] when they differ (rounds: {}).\n",
            counts.join(", ")
        ));
    }
    out.push_str(&table(&rows));
    Ok(out)
}

/// The comparison as SVG charts (`--svg`): each chart that has data, as (file name, SVG).
///
/// - `deliveries.svg`: the max phase's deliveries/s per label, the floor dashed;
/// - `cpu-per-delivery.svg`: the max phase's server CPU per delivery, the floor dashed;
/// - `latency.svg`: the steady phase's p50, p90, p99 and p99.9, a bar per label;
/// - `idle-memory.svg`: idle server RSS per tab, the 2 KiB goal dashed.
pub fn charts(runs: &[RunResult], args: &CompareArgs) -> anyhow::Result<Vec<(String, String)>> {
    let shown = Shown::new(runs, &args.columns);
    if let Some(floor) = &args.floor {
        shown.check_label(floor, "floor")?;
    }
    let floor = args.floor.as_deref();
    let series: Vec<Series> = {
        let mut palette = charts::PALETTE.iter().cycle();
        shown
            .labels
            .iter()
            .map(|label| Series {
                name: label.clone(),
                colour: if Some(label.as_str()) == floor {
                    charts::FLOOR_COLOUR.to_owned()
                } else {
                    (*palette.next().expect("a cycle never ends")).to_owned()
                },
            })
            .collect()
    };
    let first = shown.all().into_iter().next();
    let subtitle = subtitle(&shown);
    // One bar per label that has the figure, named below it.
    let per_label = |value: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<Group> {
        (shown.labels.iter().enumerate())
            .filter_map(|(i, label)| {
                let value = shown.spread(label, value)?;
                Some(Group { label: label.clone(), bars: vec![Bar { series: i, value }] })
            })
            .collect()
    };
    let floor_marker = |value: &dyn Fn(&RunResult) -> Option<f64>, unit: &str| {
        let median = shown.spread(floor?, value)?.median;
        Some(Marker { label: format!("floor: {}{unit}", charts::short(median)), value: median })
    };
    let chart = |title: String, axis: &str, groups: Vec<Group>, marker: Option<Marker>| Chart {
        title,
        subtitle: subtitle.clone(),
        axis: axis.to_owned(),
        series: series.clone(),
        groups,
        marker,
        log: false,
        legend: false,
    };

    let deliveries = |r: &RunResult| phase(r, "max").map(|p| p.deliveries_per_sec);
    let cpu = |r: &RunResult| phase(r, "max").and_then(|p| p.server_cpu_us_per_delivery);
    let idle_kib = |r: &RunResult| r.idle.rss_bytes_per_client.map(|b| b / 1024.0);
    let publishers =
        first.map_or(String::new(), |r| format!(" ({} publishers)", number(f64::from(r.publishers), 0)));
    let mut out = vec![
        (
            "deliveries.svg",
            chart(
                format!("Deliveries per second at full speed{publishers}"),
                "deliveries per second (higher is better)",
                per_label(&deliveries),
                floor_marker(&deliveries, "/s"),
            ),
        ),
        (
            "cpu-per-delivery.svg",
            chart(
                format!("Server CPU per delivery at full speed{publishers}"),
                "µs of server CPU per delivery (lower is better)",
                per_label(&cpu),
                floor_marker(&cpu, " µs"),
            ),
        ),
    ];

    type Percentile = fn(&PhaseResult) -> f64;
    let percentiles: [(&str, Percentile); 4] = [
        ("p50", |p| p.latency.p50_ms),
        ("p90", |p| p.latency.p90_ms),
        ("p99", |p| p.latency.p99_ms),
        ("p99.9", |p| p.latency.p999_ms),
    ];
    let latency_groups: Vec<Group> = percentiles
        .iter()
        .map(|(name, get)| Group {
            label: (*name).to_owned(),
            bars: (shown.labels.iter().enumerate())
                .filter_map(|(i, label)| {
                    let value = shown.spread(label, |r| phase(r, "steady").map(get))?;
                    Some(Bar { series: i, value })
                })
                .collect(),
        })
        .filter(|g| !g.bars.is_empty())
        .collect();
    let bars = latency_groups.iter().flat_map(|g| &g.bars);
    let (low, high) =
        bars.fold((f64::INFINITY, 0f64), |(lo, hi), b| (lo.min(b.value.min), hi.max(b.value.max)));
    let log = low > 0.0 && high / low > LOG_AXIS_SPREAD_MIN;
    let rate = first.and_then(|r| phase(r, "steady")).map_or(String::new(), |p| match p.spec {
        PhaseSpec::Steady { rate, .. } => format!(" at a steady {} publishes/s", number(rate, 0)),
        _ => String::new(),
    });
    let mut latency = chart(
        format!("Delivery latency{rate}"),
        if log { "ms from publish to arrival (log scale)" } else { "ms from publish to arrival" },
        latency_groups,
        None,
    );
    latency.log = log;
    latency.legend = true;
    out.push(("latency.svg", latency));
    out.push((
        "idle-memory.svg",
        chart(
            "Idle memory per tab".to_owned(),
            "KiB of server RSS per connected tab",
            per_label(&idle_kib),
            Some(Marker {
                label: format!("goal: ≤ {} KiB per tab", number(IDLE_KIB_PER_TAB_GOAL, 0)),
                value: IDLE_KIB_PER_TAB_GOAL,
            }),
        ),
    ));
    Ok(out
        .into_iter()
        .filter(|(_, chart)| !chart.groups.is_empty())
        .map(|(name, chart)| (name.to_owned(), charts::svg(&chart)))
        .collect())
}

/// Writes `charts` into `dir` (created if missing); returns the paths written.
pub fn write_charts(dir: &Path, charts: &[(String, String)]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    charts
        .iter()
        .map(|(name, svg)| {
            let path = dir.join(name);
            std::fs::write(&path, svg).with_context(|| format!("write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// The charts' second line: the date of the first run, the scale, and the rounds.
fn subtitle(shown: &Shown<'_>) -> String {
    let runs = shown.all();
    let mut parts = Vec::new();
    if let Some(date) = runs.iter().filter_map(|r| r.started_at.as_deref()).min() {
        parts.push(date.get(..10).unwrap_or(date).to_owned());
    }
    if let Some(r) = runs.first() {
        parts.push(format!(
            "{} tabs ({} users × {})",
            number(r.clients as f64, 0),
            number(f64::from(r.users), 0),
            r.clients_per_user
        ));
    }
    parts.push(match shown.rounds_max() {
        0 | 1 => "one run per server".to_owned(),
        n => format!("median of {n} rounds, whiskers: min–max"),
    });
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comparison of commit 973128c: lines written before rounds and the floor existed.
    const OLD_RESULTS: &str = include_str!("../../../docs/benchmarks/2026-11-29-973128c-results.jsonl");

    fn old_runs() -> Vec<RunResult> {
        OLD_RESULTS.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }

    fn args(columns: &[&str]) -> CompareArgs {
        CompareArgs {
            files: Vec::new(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            ratios: Vec::new(),
            differences: Vec::new(),
            only: Vec::new(),
            title: String::new(),
            floor: None,
            svg: None,
        }
    }

    /// The cells of the table row named `name` (cells are separated by at least two spaces).
    fn row<'a>(table: &'a str, name: &str) -> Vec<&'a str> {
        let line = table.lines().find(|l| l.starts_with(&format!("{name}  "))).unwrap_or_else(|| {
            panic!("no row {name:?} in\n{table}");
        });
        line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
    }

    /// `run` relabelled, in `round`, with the max phase's deliveries/s and CPU per delivery.
    fn variant(run: &RunResult, label: &str, round: Option<u32>, deliveries: f64, cpu_us: f64) -> RunResult {
        let mut run = run.clone();
        run.label = label.to_owned();
        run.round = round;
        let max = run.phases.iter_mut().find(|p| p.spec.mode() == "max").unwrap();
        max.deliveries_per_sec = deliveries;
        max.server_cpu_us_per_delivery = Some(cpu_us);
        run
    }

    /// Fails if an older results file no longer reads, or its table changes beyond the grouping
    /// of thousands (the last run of each label, ratios of the values).
    #[test]
    fn old_results_still_read_as_one_round() {
        let runs = old_runs();
        assert!(runs.iter().all(|r| r.round.is_none() && r.started_at.is_none()));
        let mut a = args(&["herald-sqlite", "nchan"]);
        a.ratios.push("herald-sqlite/nchan".to_owned());
        let table = render(&runs, &a).unwrap();
        assert_eq!(
            row(&table, "max: deliveries/s"),
            ["max: deliveries/s", "46,833", "58,589", "0.80×", "higher"]
        );
        assert_eq!(row(&table, "steady: latency p99 (ms)")[1..3], ["3.502", "0.343"]);
        assert!(!table.contains("median"), "one round: no note on rounds");
        // A run repeated later (a disturbed attempt's retry) replaces the earlier one.
        let mut again = runs.clone();
        again.push(variant(&runs[2], "nchan", None, 61_000.0, 18.0));
        assert_eq!(row(&render(&again, &a).unwrap(), "max: deliveries/s")[2], "61,000");
    }

    /// Fails if a cell is not the median of the rounds with their range, a repeated attempt in a
    /// round is not replaced by the last one, or the floor multiples are not median ÷ median.
    #[test]
    fn rounds_report_medians_and_the_floor_multiples() {
        let nchan = &old_runs()[2];
        let mut runs = vec![
            variant(nchan, "floor", Some(1), 50_000.0, 20.0),
            variant(nchan, "nchan", Some(1), 100_000.0, 30.0),
            variant(nchan, "nchan", Some(2), 999_999.0, 1.0), // disturbed, repeated below
            variant(nchan, "floor", Some(2), 50_000.0, 20.0),
            variant(nchan, "nchan", Some(2), 300_000.0, 50.0),
            variant(nchan, "floor", Some(3), 50_000.0, 20.0),
            variant(nchan, "nchan", Some(3), 200_000.0, 40.0),
        ];
        runs[4].phases[0].publishes_per_sec += 0.01; // the steady phase, below the row's precision
        let mut a = args(&["floor", "nchan"]);
        a.floor = Some("floor".to_owned());
        a.ratios.push("nchan/floor".to_owned());
        let table = render(&runs, &a).unwrap();
        assert!(table.contains("rounds: floor 3, nchan 3"), "{table}");
        assert_eq!(
            row(&table, "max: deliveries/s"),
            ["max: deliveries/s", "50,000", "200,000 [100,000–300,000]", "4.00×", "higher"]
        );
        assert_eq!(
            row(&table, "max: deliveries/s, × the floor's"),
            ["max: deliveries/s, × the floor's", "1.00×", "4.00×", "higher"]
        );
        assert_eq!(
            row(&table, "max: server CPU per delivery, × the floor's"),
            ["max: server CPU per delivery, × the floor's", "1.00×", "2.00×", "lower"]
        );
        a.floor = Some("nope".to_owned());
        assert!(render(&runs, &a).is_err(), "an unknown floor label is an error");
    }

    /// Fails if a chart is missing, the floor or the goal is not marked, or the bars do not
    /// carry the medians and their ranges.
    #[test]
    fn charts_mark_the_floor_and_the_goal() {
        let old = old_runs();
        let mut runs = vec![
            variant(&old[2], "floor", Some(1), 50_000.0, 20.0),
            variant(&old[1], "herald-memory", Some(1), 70_000.0, 15.0),
            variant(&old[1], "herald-memory", Some(2), 80_000.0, 14.0),
            variant(&old[2], "floor", Some(2), 50_000.0, 20.0),
        ];
        runs[0].started_at = Some("2026-12-05T02:48:15Z".to_owned());
        let mut a = args(&["floor", "herald-memory"]);
        a.floor = Some("floor".to_owned());
        let charts: BTreeMap<String, String> = charts(&runs, &a).unwrap().into_iter().collect();
        let names: Vec<&str> = charts.keys().map(String::as_str).collect();
        assert_eq!(names, ["cpu-per-delivery.svg", "deliveries.svg", "idle-memory.svg", "latency.svg"]);
        let deliveries = &charts["deliveries.svg"];
        assert!(deliveries.contains(">floor: 50,000/s</text>"), "{deliveries}");
        assert!(deliveries.contains(">75,000</text>"), "the median of 70,000 and 80,000");
        assert!(deliveries.contains("class=\"whisker\""));
        assert!(
            deliveries.contains(
                "2026-12-05 · 15,000 tabs (5,000 users × 3) · median of 2 rounds, whiskers: min–max"
            )
        );
        assert!(charts["cpu-per-delivery.svg"].contains(">floor: 20.0 µs</text>"));
        assert!(charts["idle-memory.svg"].contains(">goal: ≤ 2 KiB per tab</text>"));
        let latency = &charts["latency.svg"];
        assert!(latency.contains("steady 1,000 publishes/s") && latency.contains(">p99.9</text>"));
        assert_eq!(latency.matches("class=\"legend\"").count(), 2);
        a.floor = None;
        let without = super::charts(&runs, &a).unwrap();
        assert!(!without[0].1.contains("class=\"marker\""), "no --floor: no floor line");
    }
}
