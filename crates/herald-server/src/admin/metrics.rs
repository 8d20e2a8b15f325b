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

use crate::app::App;

/// The exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&app)).into_response()
}

/// The whole exposition, as of now.
pub fn render(_app: &App) -> String {
    let mut out = Exposition::default();
    process::render(&mut out);
    out.text
}

/// What a metric is, for its `# TYPE` line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
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

    /// One sample of the family just started. Label values are Herald's own names (transports,
    /// reasons, outcomes): nothing to escape.
    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                debug_assert!(!value.contains(['\\', '"', '\n']), "{name}: label value that needs escaping");
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{value}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
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

    /// Entries of `/proc/self/fd` (less the one reading it).
    fn open_fds() -> Option<u64> {
        let entries = std::fs::read_dir("/proc/self/fd").ok()?;
        Some((entries.count() as u64).saturating_sub(1))
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
}
