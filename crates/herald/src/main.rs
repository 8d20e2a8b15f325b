//! `herald`, the command line: `serve` runs the server; `token`, `publish` and `listen` are thin
//! shells over `herald-client`; `reset-epoch` renews a stopped server's database epoch.
//!
//! # Layout
//! - `main.rs` (this file): the commands, their options, and `token`, `publish`, `listen`,
//!   `reset-epoch`.
//! - `config_file`: `herald serve --config FILE`, the options from a TOML file, for every
//!   option of `herald serve` without naming any.
//! - `cluster`: what `herald serve`'s store and cluster options choose (store, bus, node id,
//!   cluster name), the checks of their combination, and the one place the store and the bus
//!   are made.
//! - `serve`: `herald serve`'s options, signals and banners around `herald-server`, which does
//!   the serving.
//!
//! Errors are one line on stderr, `herald: <message>`, and exit status 1 (2 for usage errors,
//! which clap reports). Credentials come from the same environment variables as the server's,
//! or else from the dev credentials a dev-mode server wrote in its data dir.

#![forbid(unsafe_code)]

mod cluster;
mod config_file;
mod serve;

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use herald_client::{
    Event, ListenTransport, Listener, ListenerOptions, PublishRequest, Publisher, ResumePoint, Subscriber, To,
};
use herald_server::config::{Credentials, DEV_CREDENTIALS_FILE};
use serde_json::Value;

/// jemalloc, not glibc's malloc: with glibc, a burst of connects left about 0.5 KiB of free
/// holes per idle tab inside the per-thread arenas (memory the process holds and cannot give
/// back), which put an idle tab over the 2 KiB goal with the SQLite store. jemalloc's size
/// classes do not fragment that way. Measured in docs/BENCHMARKS.md ("The allocator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL_ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEFAULT_URL: &str = "http://127.0.0.1:7300";
const DEFAULT_DATA_DIR: &str = "./herald-data";
/// Threads tokio may start for blocking work: the SQLite store's reads (at most
/// `herald_store::sqlite::READER_CONNECTIONS` at once, the rest wait for a connection). Tokio's
/// default (512) let bursts of reads start dozens of short-lived threads (39 measured after
/// 15,000 clients connected, each with a stack and a malloc arena: about 4 MiB of RSS). At the
/// bound, blocking work waits for a thread.
const BLOCKING_THREADS_MAX: usize = 8;

/// Herald: real-time notifications for every tab of every session of a user, over SSE and
/// long-polling, durable across disconnects and restarts.
#[derive(Debug, Parser)]
// The version and the commit it was built from (build.rs: `unknown` outside a git checkout,
// `-dirty` when the tree had changes).
#[command(name = "herald", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("HERALD_COMMIT"), ")"), propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server. (Boxed: its many options would make every other command as large.)
    Serve(Box<serve::ServeArgs>),
    /// Print a subscriber token (an HS256 JWT) for a user.
    Token(TokenArgs),
    /// Publish a notification and print the server's JSON answer.
    Publish(PublishArgs),
    /// Print every event of a stream as one JSON line; resume by itself after a dropped
    /// connection.
    Listen(ListenArgs),
    /// Give the database of a stopped server a new epoch, and print it. Run it after putting
    /// back an older copy of the database (a backup missing the last notifications): clients
    /// resuming with seqs of the lost history then get a `reset` instead of other notifications
    /// under seqs they saw.
    ResetEpoch(ResetEpochArgs),
}

#[derive(Debug, Args)]
struct ResetEpochArgs {
    /// The data dir of the server (its database is herald.db there).
    #[arg(long, env = "HERALD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

/// Where credentials come from when no variable gives them.
#[derive(Debug, Args)]
struct DataDirArg {
    /// Data dir of a dev-mode server, whose dev-credentials.json is read when no key is given.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The user id (the token's `sub`).
    #[arg(long)]
    user: String,
    /// The session id (the token's `sid`); without it, all clients given this token share one
    /// session.
    #[arg(long)]
    session: Option<String>,
    /// How long the token is valid: `30s`, `15m`, `1h`, `2d`…
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,
    /// The token's `topics` claim, comma-separated: the topics its tabs may listen to by
    /// themselves, names (`post:42`) or prefixes (`room:*`, `*` for every topic).
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    topics: Vec<String>,
    /// The server's token secret.
    #[arg(long, env = "HERALD_SECRET", hide_env_values = true)]
    secret: Option<String>,
    #[command(flatten)]
    data_dir: DataDirArg,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").args(["user", "users", "client", "topic"]).required(true).multiple(true)))]
struct PublishArgs {
    /// Every client of this user (with `--session`: of that session only).
    #[arg(long, conflicts_with = "users")]
    user: Option<String>,
    /// Only the clients of this session of `--user`.
    // `--users` too: a session belongs to one user, and `--users … --session` used to send to
    // every session of those users without a word.
    #[arg(long, requires = "user", conflicts_with_all = ["client", "users"])]
    session: Option<String>,
    /// Only this client (`--user` may be given too; the client id alone names it).
    #[arg(long, conflicts_with = "users")]
    client: Option<String>,
    /// Every client of each of these users, comma-separated.
    #[arg(long, value_delimiter = ',')]
    users: Vec<String>,
    /// Every tab listening to this topic, whoever its user: a `topic` event, stored in the
    /// topic's log (the answer gives its `tseq`) so that tabs resuming the topic get it; with
    /// `--ephemeral`, only the tabs connected at that moment get it.
    #[arg(long, conflicts_with_all = ["user", "users", "client", "session"])]
    topic: Option<String>,
    /// No tab of this user gets it (the user who caused it); with `--topic` only.
    // Not `requires = "topic"`: clap waives a requirement that conflicts with an argument
    // given, and `--topic` conflicts with every other target.
    #[arg(long, value_name = "USER", conflicts_with_all = ["user", "users", "client", "session"])]
    except_user: Option<String>,
    /// The notification's type (the server's default: `notification`).
    #[arg(long = "type", value_name = "TYPE")]
    kind: Option<String>,
    /// The payload, JSON.
    #[arg(long, default_value = "{}")]
    data: String,
    /// Only to connected clients: no seq (no tseq for a topic), never stored nor replayed.
    #[arg(long)]
    ephemeral: bool,
    /// Every client but this one (the tab that caused the notification).
    #[arg(long, value_name = "CLIENT")]
    except_client: Option<String>,
    /// A repeat within 24 hours gets the first answer and stores nothing new.
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// The publishers' API key.
    #[arg(long, env = "HERALD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(flatten)]
    data_dir: DataDirArg,
    /// The server.
    #[arg(long, env = "HERALD_URL", default_value = DEFAULT_URL)]
    url: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TransportArg {
    Sse,
    Poll,
}

#[derive(Debug, Args)]
struct ListenArgs {
    /// A subscriber token (see `herald token`).
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: String,
    /// The resume point already reached, an event's `id` as a stream gives it: the last seq
    /// seen (`17`), or the seq and each topic's last tseq (`17;room:1=5;post:42=0`). Every
    /// retained notification after the seq, and every retained event of each topic after its
    /// tseq, is replayed first.
    #[arg(long, value_name = "ID", value_parser = parse_resume_point)]
    after: Option<ResumePoint>,
    /// The epoch of `--after` (the `epoch` of the `hello` or poll answer it came from): if the
    /// server's log is another history now, it answers `reset` instead of replaying after it.
    #[arg(long, requires = "after")]
    epoch: Option<String>,
    /// The client id to keep (a previous `hello`'s).
    #[arg(long)]
    client: Option<String>,
    #[arg(long, value_enum, default_value = "sse")]
    transport: TransportArg,
    /// Print the server's keep-alives too (as `{"event":"keep_alive"}`).
    #[arg(long)]
    keep_alive: bool,
    /// Topics to listen to, comma-separated, named again on every reconnect (each one the
    /// token's `topics` claim must allow).
    #[arg(long, value_delimiter = ',')]
    topics: Vec<String>,
    /// The server.
    #[arg(long, env = "HERALD_URL", default_value = DEFAULT_URL)]
    url: String,
}

fn parse_resume_point(text: &str) -> Result<ResumePoint, String> {
    ResumePoint::parse(text).map_err(|e| e.to_string())
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (use e.g. 30s, 15m, 1h, 2d)"))
}

fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let log_format = match &cli.0.command {
        Command::Serve(args) => Some(args.log_format),
        _ => None,
    };
    init_tracing(log_format);
    let (cli, applied) = cli;
    if let Some(applied) = applied {
        config_file_banner(&applied);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// The command line, with `herald serve --config FILE`'s options added (see [`config_file`]).
/// A config file that cannot be used is one line and exit status 2, as clap's usage errors
/// (which clap prints itself, and `--help` and `--version` too).
fn parse_command_line() -> Result<(Cli, Option<config_file::Applied>), ExitCode> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let mut command = Cli::command();
    let (args, applied) = match config_file::expand(&command, std::env::args_os().collect()) {
        Ok(expanded) => expanded,
        Err(error) => {
            eprintln!("herald: {error}");
            return Err(ExitCode::from(2));
        }
    };
    let parsed = command.try_get_matches_from_mut(args).and_then(|matches| Cli::from_arg_matches(&matches));
    match parsed {
        Ok(cli) => Ok((cli, applied)),
        Err(error) => {
            if let Some(explained) =
                applied.as_ref().and_then(|applied| config_file::explain(&error, applied, &command))
            {
                eprintln!("herald: {explained}");
                return Err(ExitCode::from(2));
            }
            error.exit()
        }
    }
}

/// Says which options a config file set, which ones flags or variables overrode, and warns of
/// secrets in a file that every user may read.
fn config_file_banner(applied: &config_file::Applied) {
    let path = applied.path.display();
    let mut line = format!("herald: options from {path}: {}", list_or_none(&applied.used));
    if !applied.overridden.is_empty() {
        line.push_str(&format!(
            " (given by flags or environment instead: {})",
            applied.overridden.join(", ")
        ));
    }
    eprintln!("{line}");
    if !applied.exposed_secrets.is_empty() {
        let keys = applied.exposed_secrets.join(", ");
        tracing::warn!(file = %path, keys, "the config file holds secrets and every user may read it");
        eprintln!("herald: warning: {path} holds secrets ({keys}) and every user may read it: chmod 600 it");
    }
}

fn list_or_none(keys: &[String]) -> String {
    if keys.is_empty() { "none".to_owned() } else { keys.join(", ") }
}

/// Logs go to stderr (stdout is for answers and events), filtered by `RUST_LOG`; by default
/// the server says what it does and the other commands only warn (e.g. `listen` reconnecting).
/// `log_format` is `herald serve`'s `--log-format` (`None`: another command, text).
fn init_tracing(log_format: Option<serve::LogFormat>) {
    use tracing_subscriber::EnvFilter;
    let serving = log_format.is_some();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if serving { "info" } else { "warn" }));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match log_format {
        // One object a line, the event's fields at the top level, with the target (the access
        // log's is `herald::access`) for collectors to route on.
        Some(serve::LogFormat::Json) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(true)
            .try_init(),
        Some(serve::LogFormat::Text) | None => {
            builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).try_init()
        }
    };
}

/// Prints `error` as one line, with its causes, and gives exit status 1.
fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("herald: {}", one_line(error));
    ExitCode::FAILURE
}

/// `error` and its causes, `: `-separated, on one line. A cause whose text the message already
/// holds is left out: many errors print their source in their own message too (`cannot listen
/// on …: Address already in use`), and `{:#}` would repeat it.
fn one_line(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if message.contains(&cause) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&cause);
    }
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => Ok(serve::serve(*args).await?),
        Command::Token(args) => token(args),
        Command::Publish(args) => publish(args).await,
        Command::Listen(args) => listen(args).await,
        Command::ResetEpoch(args) => reset_epoch(&args),
    }
}

fn reset_epoch(args: &ResetEpochArgs) -> anyhow::Result<()> {
    let path = args.data_dir.join(herald_server::DATABASE_FILE);
    let epoch = herald_store::SqliteStore::renew_epoch(&path).map_err(|error| {
        let hint = match error {
            herald_core::StoreError::Locked { .. } => " (stop the server first)",
            _ => "",
        };
        anyhow::Error::new(error).context(format!("cannot renew the epoch of {}{hint}", path.display()))
    })?;
    println!("{epoch}");
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match args.secret {
        Some(secret) => secret,
        None => dev_credential(&args.data_dir.data_dir, DevCredential::Secret)?,
    };
    let token = herald_client::mint_token_with_topics(
        secret.as_bytes(),
        &args.user,
        args.session.as_deref(),
        args.ttl,
        &args.topics,
    )?;
    println!("{token}");
    Ok(())
}

async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    // Checked first: a typo in the payload is reported before anything else is needed.
    let data: Value = serde_json::from_str(&args.data).context("--data is not valid JSON")?;
    let to = match (args.topic, args.client, args.user, args.session) {
        (Some(topic), ..) => To::topic(topic),
        (None, Some(client), _, _) => To::client(client),
        (None, None, Some(user), Some(session)) => To::session(user, session),
        (None, None, Some(user), None) => To::user(user),
        (None, None, None, _) => {
            if args.users.iter().any(String::is_empty) {
                bail!("--users has an empty user id");
            }
            To::users(args.users)
        }
    };
    let (api_key, from_dev_credentials) = match args.api_key {
        Some(key) => (key, false),
        None => (dev_credential(&args.data_dir.data_dir, DevCredential::ApiKey)?, true),
    };
    let mut request = PublishRequest::new(to, data);
    request.kind = args.kind;
    request.durable = args.ephemeral.then_some(false);
    request.except_client = args.except_client;
    request.except_user = args.except_user;
    request.idempotency_key = args.idempotency_key;
    let publisher = Publisher::new(&args.url, api_key)?;
    let answer = publisher.publish(&request).await.map_err(|error| {
        // The usual cause: the key of a local dev server sent to another server.
        let hint = if error.code() == Some("invalid_api_key") {
            let source = if from_dev_credentials {
                format!("the dev API key of {}", args.data_dir.data_dir.display())
            } else {
                "the API key given".to_owned()
            };
            format!(" ({source} is not this server's: set --api-key or HERALD_API_KEY)")
        } else {
            String::new()
        };
        anyhow::Error::new(error).context(format!("cannot publish to {}{hint}", args.url))
    })?;
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}

async fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let transport = match args.transport {
        TransportArg::Sse => ListenTransport::Sse,
        TransportArg::Poll => ListenTransport::Poll,
    };
    let (resume_after, positions) = match args.after {
        Some(point) => (Some(point.seq), point.positions),
        None => (None, Default::default()),
    };
    let options = ListenerOptions {
        resume_after,
        positions,
        epoch: args.epoch,
        client: args.client,
        transport,
        topics: args.topics,
        ..Default::default()
    };
    let mut listener = Listener::new(Subscriber::new(&args.url, args.token)?, options);
    let stdout = std::io::stdout();
    while let Some(event) =
        listener.next_event().await.with_context(|| format!("listening to {}", args.url))?
    {
        if event == Event::KeepAlive && !args.keep_alive {
            continue;
        }
        let line = serde_json::to_string(&event)?;
        let mut out = stdout.lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`herald listen | head -1`): that is the end, not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(anyhow::Error::new(e).context("cannot write to stdout")),
        }
    }
    Ok(())
}

/// One of the dev credentials a dev-mode server keeps in its data dir.
#[derive(Debug, Clone, Copy)]
enum DevCredential {
    Secret,
    ApiKey,
}

impl DevCredential {
    /// Its field in the file.
    fn field(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::ApiKey => "api_key",
        }
    }

    /// The variable (and option) that gives it instead.
    fn variable(self) -> &'static str {
        match self {
            Self::Secret => "HERALD_SECRET",
            Self::ApiKey => "HERALD_API_KEY",
        }
    }

    fn option(self) -> &'static str {
        match self {
            Self::Secret => "--secret",
            Self::ApiKey => "--api-key",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Secret => "token secret",
            Self::ApiKey => "API key",
        }
    }
}

/// Reads one of the dev credentials in `data_dir` and says so on stderr (it is right for the
/// local dev server only, and a failure against another one should not be a mystery); or
/// explains which variable to set.
fn dev_credential(data_dir: &Path, credential: DevCredential) -> anyhow::Result<String> {
    let variable = credential.variable();
    let path = data_dir.join(DEV_CREDENTIALS_FILE);
    let Some(credentials) = Credentials::load_dev(data_dir)? else {
        bail!(
            "no {variable} set, and no dev credentials at {} (set {variable}, or point --data-dir at the \
             data dir of a server started in dev mode)",
            path.display()
        );
    };
    let value = match credential {
        DevCredential::Secret => credentials.secret,
        DevCredential::ApiKey => credentials.api_key,
    };
    if value.is_empty() {
        bail!("{} has no `{}`", path.display(), credential.field());
    }
    eprintln!(
        "herald: using the dev {} from {} (for another server, set {variable} or {})",
        credential.name(),
        path.display(),
        credential.option()
    );
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_are_one_line_without_repeated_causes() {
        /// Like a `thiserror` error that shows its source in its message.
        #[derive(Debug)]
        struct Listen {
            source: std::io::Error,
        }
        impl std::fmt::Display for Listen {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "cannot listen on 127.0.0.1:1: {}", self.source)
            }
        }
        impl std::error::Error for Listen {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.source)
            }
        }
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let error = anyhow::Error::new(Listen { source: io });
        assert_eq!(one_line(&error), "cannot listen on 127.0.0.1:1: Address already in use");
        let error = anyhow::anyhow!("refused\n  by peer").context("cannot publish to x");
        assert_eq!(one_line(&error), "cannot publish to x: refused by peer");
    }

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(2 * 86400)));
        assert!(parse_ttl("soon").is_err());
    }

    fn targets(args: &[&str]) -> Result<PublishArgs, clap::Error> {
        #[derive(Debug, Parser)]
        struct Wrapper {
            #[command(flatten)]
            publish: PublishArgs,
        }
        Wrapper::try_parse_from(std::iter::once("publish").chain(args.iter().copied())).map(|w| w.publish)
    }

    #[test]
    fn publish_target_rules() {
        assert!(targets(&["--user", "a"]).is_ok());
        assert!(targets(&["--user", "a", "--session", "s"]).is_ok());
        assert!(targets(&["--client", "c"]).is_ok());
        assert!(targets(&["--user", "a", "--client", "c"]).is_ok());
        assert_eq!(targets(&["--users", "a,b"]).unwrap().users, ["a", "b"]);
        assert!(targets(&[]).is_err(), "a target is required");
        assert!(targets(&["--session", "s", "--client", "c"]).is_err());
        assert!(targets(&["--user", "a", "--session", "s", "--client", "c"]).is_err());
        assert!(targets(&["--users", "a,b", "--user", "c"]).is_err());
        // A session belongs to one user: not with `--users` (it was silently dropped).
        assert!(targets(&["--users", "a,b", "--session", "s1"]).is_err());
        assert!(targets(&["--users", "a", "--user", "b", "--session", "s1"]).is_err());
        // A topic is a target of its own; `--except-user` goes with it only.
        assert!(targets(&["--topic", "room:1", "--except-user", "a"]).is_ok());
        assert!(targets(&["--topic", "room:1", "--user", "a"]).is_err());
        assert!(targets(&["--topic", "room:1", "--client", "c"]).is_err());
        assert!(targets(&["--topic", "room:1", "--session", "s"]).is_err(), "not silently dropped");
        assert!(targets(&["--user", "a", "--except-user", "b"]).is_err());
        assert!(targets(&["--except-user", "b"]).is_err(), "a target is still required");
    }
}
