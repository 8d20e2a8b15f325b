//! `GET /metrics`: the node's counters in Prometheus' text exposition format (version 0.0.4).
//!
//! Rendered here, by hand, from plain numbers the parts keep (herald-core's counters are
//! atomics, read once per scrape): the format is a few lines per sample, and a metrics crate
//! would either put its own types on the hot path (herald-core must not know the exposition
//! format) or need every value copied into its registry at each scrape, which is what this
//! does without the crate. Every metric is `herald_…`, its unit last, with `# HELP` and
//! `# TYPE`; docs/OPERATIONS.md ("Metrics") lists them all.

use std::fmt::{Display, Write as _};
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use herald_core::metrics::{
    CLOSE_REASONS, DURATION_BUCKETS_SECONDS, HistogramSnapshot, PublishOutcome, REFUSAL_REASONS, TRANSPORTS,
};
use herald_core::{BusStats, Census, MetricsSnapshot, Store};

use crate::app::App;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&app)).into_response()
}

/// The whole exposition, as of now. Costs one walk of the hub's users (see
/// [`herald_core::Hub::census`]) and a few reads of `/proc/self`: nothing on the hot paths.
pub fn render(app: &App) -> String {
    let mut out = Exposition::default();
    let metrics = app.hub.metrics().snapshot();
    out.family(
        "herald_node_info",
        Kind::Gauge,
        "Always 1: this node's id, its store's and bus's kinds, and Herald's version, as labels.",
    );
    out.sample(
        "herald_node_info",
        &[
            ("node", app.settings.node_id.as_str()),
            ("store", app.store.kind()),
            ("bus", app.bus.kind()),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    online(&mut out, &app.hub.census(), &metrics);
    publishes(&mut out, &metrics);
    streams(&mut out, &metrics);
    store(&mut out, app.store.as_ref(), &metrics);
    bus(&mut out, &app.bus.stats());
    webhooks(&mut out, &app.webhook_counters);
    push(&mut out, app.notifier.push_outbox());
    process::render(&mut out);
    out.text
}

/// Presence webhooks (`crate::webhook`): all zero without `--webhook-url`.
fn webhooks(out: &mut Exposition, counters: &crate::webhook::WebhookCounters) {
    use std::sync::atomic::Ordering::Relaxed;
    out.single(
        "herald_webhook_events_delivered_total",
        Kind::Counter,
        "Presence webhook events the receiver answered 2xx for (a batch sent again counts again).",
        counters.delivered_events.load(Relaxed),
    );
    out.single(
        "herald_webhook_deliveries_total",
        Kind::Counter,
        "Presence webhook POSTs the receiver answered 2xx.",
        counters.delivered_batches.load(Relaxed),
    );
    out.single(
        "herald_webhook_retries_total",
        Kind::Counter,
        "Presence webhook POSTs that failed (no answer in time, or not 2xx) and are tried again.",
        counters.retries.load(Relaxed),
    );
    out.single(
        "herald_webhook_dropped_total",
        Kind::Counter,
        "Presence webhook events dropped: the queue was full, or they were not delivered in time.",
        counters.dropped_events.load(Relaxed),
    );
    out.single(
        "herald_webhook_queue_events",
        Kind::Gauge,
        "Presence webhook events waiting to be sent.",
        counters.queued_events.load(Relaxed),
    );
}

/// Web Push (`crate::push::sender`, and the notifier's outbox bound): all zero without a VAPID
/// key.
fn push(out: &mut Exposition, outbox: &herald_core::PushOutbox) {
    use std::sync::atomic::Ordering::Relaxed;
    let counters = &outbox.counters;
    out.single(
        "herald_push_sent_total",
        Kind::Counter,
        "Pushes a push service accepted (2xx).",
        counters.sent.load(Relaxed),
    );
    out.family(
        "herald_push_failed_total",
        Kind::Counter,
        "Push sends that failed, by reason: the answer's class (4xx, 5xx), no answer in time (timeout), or none at all (refused); a send retried counts each time.",
    );
    for (reason, count) in herald_core::PUSH_FAILURE_REASONS.iter().zip(&counters.failed) {
        out.sample("herald_push_failed_total", &[("reason", reason)], count.load(Relaxed));
    }
    out.family(
        "herald_push_dropped_total",
        Kind::Counter,
        "Pushes dropped unsent, by reason (outbox full, attempts exhausted, rejected for good, unsubscribed, a live tab, endpoint no longer allowed).",
    );
    for (reason, count) in herald_core::PUSH_DROP_REASONS.iter().zip(&counters.dropped) {
        out.sample("herald_push_dropped_total", &[("reason", reason)], count.load(Relaxed));
    }
    out.single(
        "herald_push_subscriptions_removed_total",
        Kind::Counter,
        "Push subscriptions removed because their push service answered 404 or 410.",
        counters.subscriptions_removed.load(Relaxed),
    );
    out.single(
        "herald_push_outbox_deliveries",
        Kind::Gauge,
        "Pushes waiting in the store's outbox, as the sender last counted them (every 5 s), plus those this node added since, less those it settled.",
        outbox.depth(),
    );
}

/// Who is connected: the hub's census (gauges) and the connections opened (a counter).
fn online(out: &mut Exposition, census: &Census, metrics: &MetricsSnapshot) {
    out.family("herald_connections", Kind::Gauge, "Connected tabs on this node, by transport.");
    for (transport, tabs) in TRANSPORTS.iter().zip(census.tabs) {
        out.sample("herald_connections", &[("transport", transport.as_str())], tabs);
    }
    out.single(
        "herald_users_online",
        Kind::Gauge,
        "Users with at least one connected tab on this node.",
        census.users,
    );
    out.single(
        "herald_sessions_online",
        Kind::Gauge,
        "Sessions with at least one connected tab on this node.",
        census.sessions,
    );
    out.single(
        "herald_tabs_online",
        Kind::Gauge,
        "Connected tabs on this node (all transports).",
        census.tabs.iter().sum::<u64>(),
    );
    out.family(
        "herald_connections_opened_total",
        Kind::Counter,
        "Streams, polls and WebSockets attached to the hub, by transport.",
    );
    for (transport, opened) in TRANSPORTS.iter().zip(metrics.connections_opened) {
        out.sample("herald_connections_opened_total", &[("transport", transport.as_str())], opened);
    }
}

/// Publishes by outcome, refusals by reason, the publish duration.
fn publishes(out: &mut Exposition, metrics: &MetricsSnapshot) {
    out.family(
        "herald_publishes_total",
        Kind::Counter,
        "Publishes done, by outcome: stored (durable), ephemeral, repeat (an idempotency key seen before), job (into followers' inboxes in the background).",
    );
    for (outcome, count) in PublishOutcome::ALL.iter().zip(metrics.publishes) {
        out.sample("herald_publishes_total", &[("outcome", outcome.as_str())], count);
    }
    out.family("herald_publishes_refused_total", Kind::Counter, "Publishes refused or failed, by reason.");
    for (reason, count) in REFUSAL_REASONS.iter().zip(metrics.refusals) {
        out.sample("herald_publishes_refused_total", &[("reason", reason)], count);
    }
    out.histogram(
        "herald_publish_duration_seconds",
        "From a publish asked of the notifier to its receipt or refusal, in seconds.",
        &metrics.publish_duration,
    );
}

/// Deliveries, the publish-to-write latency, closes and resumes.
fn streams(out: &mut Exposition, metrics: &MetricsSnapshot) {
    out.family(
        "herald_deliveries_total",
        Kind::Counter,
        "Notifications and topic events handed to a transport to write (replayed ones too), by transport.",
    );
    for (transport, count) in TRANSPORTS.iter().zip(metrics.deliveries) {
        out.sample("herald_deliveries_total", &[("transport", transport.as_str())], count);
    }
    out.histogram(
        "herald_publish_to_write_seconds",
        "From a live notification made on this node (after its append, or on arrival from the bus) to its transport taking it to write, in seconds.",
        &metrics.publish_to_write,
    );
    out.family(
        "herald_closes_total",
        Kind::Counter,
        "Streams Herald ended, by the reason of their closed event.",
    );
    for (reason, count) in CLOSE_REASONS.iter().zip(metrics.closes) {
        out.sample("herald_closes_total", &[("reason", reason.as_str())], count);
    }
    out.family(
        "herald_resumes_total",
        Kind::Counter,
        "Connections that gave a resume point: exact (replayed from it) or reset (it was no longer retained, or of another epoch).",
    );
    out.sample("herald_resumes_total", &[("outcome", "exact")], metrics.resumes_exact);
    out.sample("herald_resumes_total", &[("outcome", "reset")], metrics.resumes_reset);
}

/// The store: appends as the notifier waits for them, and the writer's queue and commits.
fn store(out: &mut Exposition, store: &dyn Store, metrics: &MetricsSnapshot) {
    out.histogram(
        "herald_store_append_duration_seconds",
        "A publish's append to the store, as the publish waits for it, in seconds.",
        &metrics.store_append_duration,
    );
    out.single(
        "herald_store_errors_total",
        Kind::Counter,
        "Publish appends the store failed.",
        metrics.store_errors,
    );
    // A store without a writer queue (memory) has none of these.
    if let Some(writer) = store.writer_stats() {
        out.histogram(
            "herald_store_commit_duration_seconds",
            "Each batch's transaction in the store's writer, its commit included, in seconds.",
            &writer.commit_duration,
        );
        out.single(
            "herald_store_queue_length",
            Kind::Gauge,
            "Requests waiting in the store writer's queue.",
            writer.queued,
        );
        out.single(
            "herald_store_requests_total",
            Kind::Counter,
            "Requests the store's writer took off its queue.",
            writer.requests,
        );
        out.single(
            "herald_store_batches_total",
            Kind::Counter,
            "Batches (transactions) the store's writer ran; requests over batches is the group-commit factor.",
            writer.batches,
        );
    }
}

/// The bus between the nodes of a cluster (all zero on a single node).
fn bus(out: &mut Exposition, stats: &BusStats) {
    out.family(
        "herald_bus_messages_total",
        Kind::Counter,
        "Envelopes that crossed the broker, by direction.",
    );
    out.sample("herald_bus_messages_total", &[("direction", "in")], stats.envelopes_in);
    out.sample("herald_bus_messages_total", &[("direction", "out")], stats.envelopes_out);
    out.family(
        "herald_bus_bytes_total",
        Kind::Counter,
        "Bytes of envelopes that crossed the broker, by direction.",
    );
    out.sample("herald_bus_bytes_total", &[("direction", "in")], stats.bytes_in);
    out.sample("herald_bus_bytes_total", &[("direction", "out")], stats.bytes_out);
    out.single(
        "herald_bus_rejected_total",
        Kind::Counter,
        "Envelopes received that did not decode.",
        stats.rejected,
    );
    out.single(
        "herald_bus_publish_failures_total",
        Kind::Counter,
        "Envelopes the broker would not take.",
        stats.publish_failures,
    );
    out.single(
        "herald_bus_reconnects_total",
        Kind::Counter,
        "Times the broker connection came back after it was lost.",
        stats.reconnects,
    );
    out.single(
        "herald_bus_repair_passes_total",
        Kind::Counter,
        "Gap repair passes: the store's last seqs compared with the tabs' positions.",
        stats.repair_passes,
    );
    out.single(
        "herald_bus_repaired_total",
        Kind::Counter,
        "Notifications gap repairs fanned out because tabs here were behind the store.",
        stats.repaired,
    );
    out.single("herald_bus_peers", Kind::Gauge, "Other nodes heard of lately.", stats.peers.len());
}

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// The text being written: families (a `# HELP` and a `# TYPE` line), then their samples.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts the family `name`. `help` is one line of plain text (no backslash, no newline).
    pub(crate) fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']), "{name}: help text that needs escaping");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of the family just started (`name` may add `_bucket`, `_sum`, `_count`).
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"");
                // The format's escapes: backslash, double quote and line feed.
                for c in value.chars() {
                    match c {
                        '\\' => self.text.push_str("\\\\"),
                        '"' => self.text.push_str("\\\""),
                        '\n' => self.text.push_str("\\n"),
                        c => self.text.push(c),
                    }
                }
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A histogram family: cumulative `_bucket`s over [`DURATION_BUCKETS_SECONDS`] and `+Inf`,
    /// `_sum` in seconds, `_count`.
    pub(crate) fn histogram(&mut self, name: &str, help: &str, histogram: &HistogramSnapshot) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in DURATION_BUCKETS_SECONDS.iter().zip(histogram.counts) {
            cumulative += count;
            self.sample(&bucket, &[("le", &bound.to_string())], cumulative);
        }
        self.sample(&bucket, &[("le", "+Inf")], histogram.count());
        self.sample(&format!("{name}_sum"), &[], histogram.sum_nanos as f64 / 1e9);
        self.sample(&format!("{name}_count"), &[], histogram.count());
    }

    /// A family with one sample and no labels.
    pub(crate) fn single(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The process's own figures, read from `/proc/self` at each scrape (Linux; elsewhere these
/// metrics are absent).
mod process {
    use std::path::Path;

    use super::{Exposition, Kind};

    pub(super) fn render(out: &mut Exposition) {
        if let Some(bytes) = resident_memory_bytes() {
            out.single(
                "herald_process_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory of the process (RSS), in bytes.",
                bytes,
            );
        }
        if let Some(fds) = open_fds() {
            out.single("herald_process_open_fds", Kind::Gauge, "File descriptors the process has open.", fds);
        }
        if let Some(seconds) = cpu_seconds() {
            out.single(
                "herald_process_cpu_seconds_total",
                Kind::Counter,
                "CPU time the process has used, user and system, in seconds.",
                seconds,
            );
        }
    }

    /// `/proc/self/statm`'s resident pages times the page size.
    fn resident_memory_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * page_size()?)
    }

    /// The process's open file descriptors: [`descriptors_in`] of `/proc/self/fd`, less the one
    /// a listing of that directory holds open itself.
    fn open_fds() -> Option<u64> {
        descriptors_in(Path::new("/proc/self/fd"), 1)
    }

    /// The open descriptors a `/proc/<pid>/fd` directory lists. Linux 6.2 and later report their
    /// number as the directory's size: one `stat`, whatever the count (13–37 µs at 15,000
    /// descriptors, measured). Older kernels report 0 there, and the directory is listed
    /// instead, less `own` (descriptors the listing opens in the listed process): that costs the
    /// kernel a lookup per descriptor, 10–30 ms of CPU per scrape at 15,000 tabs on an idle
    /// server and more under load (measured: it was 1.6 % of a full-load profile with a scrape
    /// every 15 s), which is why it is only the fallback.
    fn descriptors_in(fd_dir: &Path, own: u64) -> Option<u64> {
        let counted = std::fs::metadata(fd_dir).ok()?.len();
        if counted > 0 {
            return Some(counted);
        }
        listed_descriptors(fd_dir, own)
    }

    fn listed_descriptors(fd_dir: &Path, own: u64) -> Option<u64> {
        let entries = std::fs::read_dir(fd_dir).ok()?;
        Some((entries.count() as u64).saturating_sub(own))
    }

    /// `utime + stime` of `/proc/self/stat`, in clock ticks, as seconds.
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count from after it.
        let after_name = &stat[stat.rfind(')')? + 2..];
        let mut fields = after_name.split_whitespace();
        // Fields 14 and 15 of the whole line: 11 and 12 after the name and the state.
        let user: u64 = fields.nth(11)?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        Some((user + system) as f64 / clock_ticks_per_second()? as f64)
    }

    fn page_size() -> Option<u64> {
        // SAFETY: sysconf only reads a configuration value; it takes no pointer.
        #[allow(unsafe_code)]
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|&size| size > 0)
    }

    fn clock_ticks_per_second() -> Option<u64> {
        // SAFETY: sysconf only reads a configuration value; it takes no pointer.
        #[allow(unsafe_code)]
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(ticks).ok().filter(|&ticks| ticks > 0)
    }

    #[cfg(test)]
    mod tests {
        use std::path::PathBuf;
        use std::process::{Command, Stdio};

        use super::*;

        /// A child holds still: its standard descriptors and whatever it inherited (cargo's
        /// jobserver pipes, say), none opened or closed while it is counted, unlike this process,
        /// whose test threads open and close sockets.
        #[test]
        fn the_count_of_a_processs_descriptors_is_what_its_fd_directory_lists() {
            let mut child = Command::new("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sleep");
            let fd_dir = PathBuf::from(format!("/proc/{}/fd", child.id()));
            let by_size = descriptors_in(&fd_dir, 0);
            let by_listing = listed_descriptors(&fd_dir, 0);
            let _ = child.kill();
            let _ = child.wait();
            assert!(by_listing.is_some_and(|fds| fds >= 3), "{by_listing:?}");
            assert_eq!(by_size, by_listing);
        }

        #[test]
        fn this_processs_count_is_not_zero() {
            assert!(open_fds().is_some_and(|fds| fds >= 3));
        }
    }
}
