//! Test support for code that runs on PostgreSQL — this crate's tests, and those of the server
//! and the binary (feature `test-support`): the test database named by [`URL_VARIABLE`], a schema
//! of one's own in it ([`TestSchema`]), and a private PostgreSQL server a test can stop and start
//! ([`PrivatePostgres`]).
//!
//! A test that needs PostgreSQL checks [`skip_reason`] first and, without a database, prints the
//! reason and passes. Every schema a test makes is dropped when the test is done with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_core::notification::now_ms;

use super::PostgresOptions;

/// The variable that names the test database: `postgres://postgres@127.0.0.1:5432/test` in CI.
pub const URL_VARIABLE: &str = "HERALD_TEST_POSTGRES";

/// The test database's URL, if [`URL_VARIABLE`] names one.
pub fn test_url() -> Option<String> {
    std::env::var(URL_VARIABLE).ok().filter(|url| !url.is_empty())
}

/// Why a test that needs the test database cannot run here; `None` when it can.
pub fn skip_reason() -> Option<String> {
    match test_url() {
        Some(_) => None,
        None => Some(format!("{URL_VARIABLE} is not set (e.g. postgres://postgres@127.0.0.1:5432/test)")),
    }
}

/// A private PostgreSQL for a test that stops, starts or pauses its database. `None`, with the
/// reason printed, when [`URL_VARIABLE`] is not set (the test skips); when it is set (as in CI),
/// an instance that cannot be made fails the test instead of skipping it quietly. Blocking
/// (`initdb`): call it from `tokio::task::block_in_place` in an async test.
pub fn private_postgres_or_skip() -> Option<PrivatePostgres> {
    if let Some(reason) = skip_reason() {
        eprintln!("skipped: {reason}");
        return None;
    }
    match PrivatePostgres::create() {
        Ok(postgres) => Some(postgres),
        Err(reason) => panic!("{URL_VARIABLE} is set, but a private PostgreSQL cannot be started: {reason}"),
    }
}

/// A schema name no other test (of this run or another process) uses.
pub fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "herald_test_{}_{}_{}",
        std::process::id(),
        now_ms() % 1_000_000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Drops `schema` (and everything in it) on its own thread and runtime: `Drop` may run inside a
/// runtime.
pub fn drop_schema(url: &str, schema: &str) {
    let (url, name) = (url.to_owned(), schema.to_owned());
    let dropped = std::thread::spawn(move || {
        let schema = name;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await
        })
    })
    .join();
    if !matches!(dropped, Ok(Ok(()))) {
        eprintln!("could not drop the test schema {schema}: {dropped:?}");
    }
}

/// A schema of its own in the test database, not created yet (the store creates it when it is
/// opened with [`TestSchema::options`] or [`TestSchema::url`]), dropped when this is dropped.
pub struct TestSchema {
    /// The test database's URL, without the schema.
    pub database_url: String,
    pub name: String,
}

impl TestSchema {
    /// A fresh schema name in the test database; `None` without one (see [`skip_reason`]).
    pub fn new() -> Option<Self> {
        Some(Self { database_url: test_url()?, name: fresh_schema() })
    }

    /// The store's options for this schema.
    pub fn options(&self) -> PostgresOptions {
        PostgresOptions { schema: Some(self.name.clone()), ..PostgresOptions::new(&self.database_url) }
    }

    /// The store URL of this schema as `herald serve --store` takes it (`…?schema=NAME`, see
    /// [`PostgresOptions::from_url`]).
    pub fn url(&self) -> String {
        let separator = if self.database_url.contains('?') { '&' } else { '?' };
        format!("{}{separator}schema={}", self.database_url, self.name)
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        drop_schema(&self.database_url, &self.name);
    }
}

/// A port nothing listens on now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL server of a test's own (`initdb` in a temporary directory, run as the `postgres`
/// user), which the test stops and starts by its PID: what a database restart does to whoever
/// uses it. Stopped, and its directory removed, when dropped.
pub struct PrivatePostgres {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    uid: u32,
    gid: u32,
    server: Option<std::process::Child>,
}

impl PrivatePostgres {
    /// Creates the cluster and starts it, or says why it cannot be here: not root, no
    /// `postgres` user, no binaries under `/usr/lib/postgresql`.
    pub fn create() -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        #[allow(unsafe_code)]
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot run initdb as the postgres user".into());
        }
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .max()
            .ok_or("no PostgreSQL binaries under /usr/lib/postgresql")?;
        let name = std::ffi::CString::new("postgres").unwrap();
        // SAFETY: getpwnam reads a NUL-terminated name; the entry is copied out before any other
        // call could overwrite it.
        #[allow(unsafe_code)]
        let (uid, gid) = unsafe {
            let pw = libc::getpwnam(name.as_ptr());
            if pw.is_null() {
                return Err("no postgres user".into());
            }
            ((*pw).pw_uid, (*pw).pw_gid)
        };
        let dir = tempfile::Builder::new().prefix("herald-pg-").tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        for path in [dir.path(), data.as_path()] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let mut this = Self { bin, dir, port: free_port(), uid, gid, server: None };
        let status = this
            .command("initdb")
            .args(["-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres", "--no-sync"])
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("initdb: {e}"))?;
        if !status.success() {
            return Err(format!("initdb failed: {status}"));
        }
        this.start();
        Ok(this)
    }

    /// Makes the server take TLS connections only, with `cert_pem` and `key_pem` (restarted):
    /// `hostssl` entries trust, plain TCP connections are rejected by `pg_hba.conf`.
    pub fn require_tls(&mut self, cert_pem: &str, key_pem: &str) {
        use std::io::Write as _;
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.dir.path().join("data");
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, pem).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(self.uid), Some(self.gid)).unwrap();
        }
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        writeln!(conf, "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'").unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        self.stop();
        self.start();
    }

    fn command(&self, program: &str) -> std::process::Command {
        use std::os::unix::process::CommandExt;
        let mut command = std::process::Command::new(self.bin.join(program));
        command.uid(self.uid).gid(self.gid).current_dir(self.dir.path());
        command
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) on its port, and waits until it takes connections (30 s at
    /// most).
    pub fn start(&mut self) {
        let data = self.dir.path().join("data");
        let log = std::fs::File::create(self.dir.path().join("log")).unwrap();
        let server = self
            .command("postgres")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-k",
                self.dir.path().to_str().unwrap(),
            ])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=40"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        // Not just the port: PostgreSQL listens before it takes connections ("the database
        // system is starting up"); `pg_isready` says when it does.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = std::process::Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "the private PostgreSQL did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGINT to the postmaster, by its PID), waiting until it exited: open
    /// connections are ended, as when a database is restarted.
    pub fn stop(&mut self) {
        // A paused server would never see the SIGINT.
        self.resume();
        if let Some(mut server) = self.server.take() {
            signal(server.id(), libc::SIGINT);
            let _ = server.wait();
        }
    }

    /// Stops (SIGSTOP) the server and every process it started, by their PIDs: connections
    /// stay open and nothing answers, as on a host that froze or behind a network partition.
    /// [`PrivatePostgres::resume`] lets them go on.
    pub fn pause(&self) {
        // The postmaster first, so that it starts no new process meanwhile.
        if let Some(server) = &self.server {
            signal(server.id(), libc::SIGSTOP);
            for child in children(server.id()) {
                signal(child, libc::SIGSTOP);
            }
        }
    }

    /// Lets a paused server go on (SIGCONT to it and to every process it started).
    pub fn resume(&self) {
        if let Some(server) = &self.server {
            for child in children(server.id()) {
                signal(child, libc::SIGCONT);
            }
            signal(server.id(), libc::SIGCONT);
        }
    }
}

/// The PIDs of the processes `pid` started (Linux's `/proc/PID/task/PID/children`), so that no
/// process is signalled but by its PID.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .collect()
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill only sends a signal, to the PID of the server this test started or of one
    // of its children.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
