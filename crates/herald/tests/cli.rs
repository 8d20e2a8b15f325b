//! The `herald` binary without a server: argument checks, tokens, credentials lookup and error
//! output. (Runs against a live server, as processes, are in `e2e.rs`.)

use std::process::{Command, Output};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// The binary, in an empty working dir (so that no `./herald-data` is found by accident) and
/// with none of Herald's variables inherited.
fn herald(dir: &tempfile::TempDir) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.current_dir(dir.path());
    for variable in [
        "HERALD_SECRET",
        "HERALD_API_KEY",
        "HERALD_DATA_DIR",
        "HERALD_URL",
        "HERALD_TOKEN",
        "HERALD_ALLOWED_ORIGINS",
        "HERALD_VAPID_PRIVATE_KEY",
        "HERALD_VAPID_SUBJECT",
        "RUST_LOG",
    ] {
        command.env_remove(variable);
    }
    // Tests run side by side: each `herald serve`'s admin port on a free port, not the default.
    command.env("HERALD_ADMIN_LISTEN", "127.0.0.1:0");
    command
}

fn run(command: &mut Command) -> (Output, String, String) {
    let output = command.output().expect("the binary runs");
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    (output, stdout, stderr)
}

/// Exit status 1 and exactly one line on stderr, starting with `herald: `.
fn assert_one_line_error(output: &Output, stderr: &str) {
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("herald: "), "{stderr:?}");
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn decode(token: &str, secret: &[u8]) -> Value {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_secret(secret), &validation)
        .expect("a valid token")
        .claims
}

#[test]
fn publish_with_invalid_data_fails_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    // Neither an API key nor a server: the payload is checked before either is needed.
    let (output, stdout, stderr) = run(herald(&dir)
        .args(["publish", "--user", "alice", "--data", "{\"text\": oops}"])
        .env("HERALD_URL", format!("http://127.0.0.1:{}", closed_port())));
    assert_one_line_error(&output, &stderr);
    assert!(stderr.contains("--data is not valid JSON"), "{stderr}");
    assert!(stdout.is_empty());
}

#[test]
fn token_with_herald_secret_prints_a_jwt_with_the_right_claims() {
    let dir = tempfile::tempdir().unwrap();
    let (output, stdout, stderr) = run(herald(&dir)
        .args(["token", "--user", "a/b c", "--session", "laptop", "--ttl", "15m"])
        .env("HERALD_SECRET", "s3cret"));
    assert!(output.status.success(), "{stderr}");
    let token = stdout.trim_end();
    assert_eq!(stdout, format!("{token}\n"), "the token alone, on one line");
    let claims = decode(token, b"s3cret");
    assert_eq!(claims["sub"], "a/b c");
    assert_eq!(claims["sid"], "laptop");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 900);

    // Without a session there is no `sid`; the default ttl is one hour.
    let (output, stdout, _) =
        run(herald(&dir).args(["token", "--user", "bob"]).env("HERALD_SECRET", "s3cret"));
    assert!(output.status.success());
    let claims = decode(stdout.trim_end(), b"s3cret");
    assert!(claims.get("sid").is_none(), "{claims}");
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 3600);
}

#[test]
fn token_without_a_secret_or_dev_credentials_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (output, stdout, stderr) = run(herald(&dir).args(["token", "--user", "alice"]));
    assert_one_line_error(&output, &stderr);
    assert!(stderr.contains("HERALD_SECRET") && stderr.contains("dev-credentials.json"), "{stderr}");
    assert!(stdout.is_empty());
}

#[test]
fn token_and_publish_read_the_dev_credentials_of_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::fs::write(data_dir.join("dev-credentials.json"), r#"{"secret": "dev-secret", "api_key": "hk_dev"}"#)
        .unwrap();
    let (output, stdout, stderr) =
        run(herald(&dir).args(["token", "--user", "alice"]).env("HERALD_DATA_DIR", &data_dir));
    assert!(output.status.success(), "{stderr}");
    assert_eq!(decode(stdout.trim_end(), b"dev-secret")["sub"], "alice");
    // Where the secret came from is said on stderr (stdout is the token alone).
    let note = format!(
        "herald: using the dev token secret from {}",
        data_dir.join("dev-credentials.json").display()
    );
    assert!(stderr.starts_with(&note) && stderr.contains("HERALD_SECRET"), "{stderr}");

    // `publish` finds the key there too, then fails on the unreachable server, in one line.
    let url = format!("http://127.0.0.1:{}", closed_port());
    let (output, _, stderr) = run(herald(&dir).args([
        "publish",
        "--user",
        "alice",
        "--data",
        "{}",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--url",
        &url,
    ]));
    // A note saying where the key came from, then the error in one line.
    let (note, error) = stderr.split_once('\n').unwrap();
    assert!(note.starts_with("herald: using the dev API key from"), "{stderr}");
    assert_one_line_error(&output, error);
    assert!(error.contains("cannot publish to") && !error.contains("HERALD_API_KEY"), "{stderr}");
}

#[test]
fn publish_without_an_api_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (output, _, stderr) = run(herald(&dir).args(["publish", "--user", "alice", "--data", "{}"]));
    assert_one_line_error(&output, &stderr);
    assert!(stderr.contains("HERALD_API_KEY"), "{stderr}");
}

#[test]
fn usage_errors_exit_with_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["publish", "--data", "{}"][..],                             // no target
        &["publish", "--session", "s", "--client", "c"],              // a session needs its user
        &["publish", "--users", "a,b", "--session", "s"],             // a session has one user
        &["token", "--user", "alice", "--ttl", "soon"],               // not a duration
        &["listen", "--token", "t", "--transport", "carrier-pigeon"], // no such transport
        &["listen", "--token", "t", "--epoch", "e"],                  // an epoch is of an --after
    ] {
        let (output, _, stderr) = run(herald(&dir).args(args));
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
    }
}

/// `reset-epoch` where there is no database: one line, and no database made (an empty new one
/// would be a new epoch of an empty log, which is not what the operator asked).
#[test]
fn reset_epoch_without_a_database_is_a_clear_error_and_makes_none() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let (output, stdout, stderr) = run(herald(&dir).args(["reset-epoch", "--data-dir", "data"]));
    assert_one_line_error(&output, &stderr);
    assert!(stdout.is_empty() && stderr.contains("herald.db"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path().join("data")).unwrap().count(), 0, "nothing was created");
}

#[test]
fn serve_refuses_an_allowed_origin_that_is_not_one() {
    let dir = tempfile::tempdir().unwrap();
    // A port in use: should the value be taken, the server fails fast instead of running.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let serve = |dir: &tempfile::TempDir| {
        let mut command = herald(dir);
        command.args(["serve", "--memory", "--listen", &listen]);
        command
    };
    for bad in ["https://app.example/", "*", "app.example", "https://a.example,ftp://b.example"] {
        let (output, _, stderr) = run(serve(&dir).args(["--allowed-origins", bad]));
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.lines().next().unwrap().contains("is not an origin like"), "{bad}: {stderr}");
        let (output, _, stderr) = run(serve(&dir).env("HERALD_ALLOWED_ORIGINS", bad));
        assert_eq!(output.status.code(), Some(2), "HERALD_ALLOWED_ORIGINS={bad}: {stderr}");
    }
    // A good list gets past the options (and fails on the port).
    let (output, _, stderr) =
        run(serve(&dir).env("HERALD_ALLOWED_ORIGINS", "https://a.example, http://localhost:3000"));
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    drop(taken);
}

/// Runs `command` (a `herald serve` expected to refuse to start) for at most 20 s: one that
/// starts serving instead is killed, and the test fails rather than waits forever.
fn run_refused(command: &mut Command) -> (Output, String, String) {
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!("the server started instead of refusing: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    (output, stdout, stderr)
}

/// The admin port is bound at start like the public one: taken (another herald on the default
/// 7301, say) or malformed, the start fails in one line that names the option. Fails if a taken
/// admin port were ignored (the server would run without its metrics).
#[test]
fn serve_fails_in_one_line_when_the_admin_port_is_taken_or_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let (output, _, stderr) = run_refused(herald(&dir).args([
        "serve",
        "--memory",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        &admin,
    ]));
    assert_one_line_error(&output, &stderr);
    assert!(stderr.contains(&admin) && stderr.contains("--admin-listen"), "{stderr}");
    // The variable too (the flag is absent: `herald()` sets it to a free port otherwise).
    let (output, _, stderr) = run_refused(
        herald(&dir)
            .args(["serve", "--memory", "--listen", "127.0.0.1:0"])
            .env("HERALD_ADMIN_LISTEN", &admin),
    );
    assert_one_line_error(&output, &stderr);
    assert!(stderr.contains("--admin-listen"), "{stderr}");
    for bad in ["7301", "nowhere:port", ":7301"] {
        let (output, _, stderr) = run_refused(herald(&dir).args([
            "serve",
            "--memory",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            bad,
        ]));
        assert_one_line_error(&output, &stderr);
        assert!(stderr.contains("--admin-listen"), "{bad}: {stderr}");
    }
    drop(taken);
}

/// A VAPID key that is not one, a key without a subject, and a subject that is neither
/// `mailto:` nor `https://` are refused with one line before the port is bound; a good pair
/// gets past the options (and fails on the port in use).
#[test]
fn serve_refuses_a_bad_vapid_key_or_subject_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let serve = |args: &[&str]| {
        let mut command = herald(&dir);
        command.args(["serve", "--memory", "--listen", &listen]).args(args);
        command
    };
    // A P-256 scalar: 32 bytes, URL-safe base64.
    let good = "RS0WdYWWo1HajXg3NZR1olzCf31i-ZBGDkFyCs7j1jw";
    for (args, says) in [
        (vec!["--vapid-private-key", "short", "--vapid-subject", "mailto:ops@example.com"], "32 bytes"),
        (vec!["--vapid-private-key", good], "needs --vapid-subject"),
        (vec!["--vapid-private-key", good, "--vapid-subject", "ops@example.com"], "mailto:"),
    ] {
        let (output, _, stderr) = run(&mut serve(&args));
        assert_one_line_error(&output, &stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains(good), "the key is never printed: {stderr}");
    }
    let (output, _, stderr) = run(serve(&[])
        .env("HERALD_VAPID_PRIVATE_KEY", good)
        .env("HERALD_VAPID_SUBJECT", "https://example.com/ops"));
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen"), "{stderr}");
    drop(taken);
}
