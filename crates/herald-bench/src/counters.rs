//! Counters read from outside the generator before and after each phase (`--counters-cmd`): a
//! command that prints `NAME VALUE` lines, such as a cluster's broker traffic read from the
//! broker's monitoring (bench/cluster.sh reads NATS's `/varz` and Redis's `INFO stats`). The
//! generator reports each counter's change over the phase. It knows nothing of what they count;
//! a few names have rows of their own in the comparison table: `bus_in_msgs`, `bus_in_bytes`
//! (what the nodes published to the cluster's broker) and `bus_out_msgs`, `bus_out_bytes` (what
//! the broker sent to the nodes), all nodes together.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use tokio::time::timeout;

/// Longest the command may take; it runs between phases, not while publishing.
const COUNTERS_CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most counters taken from one reading.
const COUNTERS_MAX: usize = 256;

/// Runs `command` with `sh -c` and reads its `NAME VALUE` lines (blank lines and lines starting
/// with `#` are skipped).
pub async fn read(command: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let output = timeout(
        COUNTERS_CMD_TIMEOUT,
        tokio::process::Command::new("sh").arg("-c").arg(command).kill_on_drop(true).output(),
    )
    .await
    .with_context(|| format!("--counters-cmd took more than {COUNTERS_CMD_TIMEOUT:?}"))?
    .context("running --counters-cmd")?;
    if !output.status.success() {
        bail!(
            "--counters-cmd failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&String::from_utf8_lossy(&output.stdout))
}

fn parse(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut counters = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, value) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("--counters-cmd: {line:?} is not `NAME VALUE`"))?;
        let value: f64 =
            value.trim().parse().with_context(|| format!("--counters-cmd: {line:?}: not a number"))?;
        counters.insert(name.to_owned(), value);
        ensure!(counters.len() <= COUNTERS_MAX, "--counters-cmd: more than {COUNTERS_MAX} counters");
    }
    Ok(counters)
}

/// `after − before` for every counter in both.
pub fn change(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after.iter().filter_map(|(name, a)| Some((name.clone(), a - before.get(name)?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_changes() {
        let before = parse("# broker\nbus_in_msgs 10\n\nbus_in_bytes 1e3\n").unwrap();
        let after = parse("bus_in_msgs 25\nbus_in_bytes 1500\nnew 1\n").unwrap();
        let d = change(&before, &after);
        assert_eq!(d.get("bus_in_msgs"), Some(&15.0));
        assert_eq!(d.get("bus_in_bytes"), Some(&500.0));
        assert_eq!(d.get("new"), None);
        assert!(parse("oops").is_err());
        assert!(parse("a b").is_err());
    }

    #[test]
    fn a_command_is_read() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(read("echo 'x 1'; echo 'y 2.5'")).unwrap();
        assert_eq!(got.get("y"), Some(&2.5));
        assert!(rt.block_on(read("exit 3")).is_err());
    }
}
