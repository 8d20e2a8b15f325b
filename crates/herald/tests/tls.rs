//! `herald serve --tls-cert --tls-key`: the real binary serves HTTPS, reloads its certificate on
//! SIGHUP, and refuses unusable files at start with one line. Every child is killed by its PID.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for the server to answer, or to serve the renewed certificate.
const WAIT: Duration = Duration::from_secs(15);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf, reqwest::Certificate) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key, reqwest::Certificate::from_der(generated.cert.der()).unwrap())
}

fn herald(cwd: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.current_dir(cwd).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
        .env("HERALD_SECRET", "tls-e2e-secret-that-is-long-enough-32b")
        .env("HERALD_API_KEY", "tls-e2e-key")
        // Tests run side by side: the admin port on a free port, not the default 7301.
        .env("HERALD_ADMIN_LISTEN", "127.0.0.1:0");
    command
}

async fn healthz(port: u16, trusted: &reqwest::Certificate) -> Result<u16, reqwest::Error> {
    let client = reqwest::Client::builder()
        .add_root_certificate(trusted.clone())
        .tls_built_in_root_certs(false)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    client.get(format!("https://localhost:{port}/healthz")).send().await.map(|r| r.status().as_u16())
}

#[tokio::test]
async fn serves_https_and_reloads_the_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, first) = certificate(dir.path(), "live");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = herald(dir.path())
        .args(["serve", "--memory", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Killed(child);
    let deadline = Instant::now() + WAIT;
    while healthz(port, &first).await.ok() != Some(200) {
        assert!(Instant::now() < deadline, "the server never answered over HTTPS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (next_cert, next_key, second) = certificate(dir.path(), "next");
    std::fs::copy(&next_cert, &cert).unwrap();
    std::fs::copy(&next_key, &key).unwrap();
    let pid = libc::pid_t::try_from(server.0.id()).unwrap();
    // SAFETY: kill(2) with a valid signal number has no memory-safety preconditions; `pid` is
    // our child, not yet reaped (its guard holds it).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + WAIT;
    while healthz(port, &second).await.ok() != Some(200) {
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthz(port, &first).await.is_err(), "the old certificate is no longer served");
}

#[test]
fn unusable_tls_options_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let only_cert = herald(dir.path()).args(["serve", "--memory", "--tls-cert", "x.crt"]).output().unwrap();
    assert_eq!(only_cert.status.code(), Some(2), "clap refuses --tls-cert without --tls-key");

    let missing = herald(dir.path())
        .args(["serve", "--memory", "--tls-cert", "x.crt", "--tls-key", "x.key"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot read") && stderr.contains("x.crt"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}
