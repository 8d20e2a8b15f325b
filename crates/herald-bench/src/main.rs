//! `herald-bench`: see the crate documentation of `herald_bench`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald_bench::compare::{self, CompareArgs};
use herald_bench::fsync::{self, FsyncProbeArgs};
use herald_bench::run::{self, RunArgs};
use herald_bench::worker;

/// Exit status of a run that other programs disturbed (`--disturbed-cpu-secs`).
const EXIT_DISTURBED: u8 = 3;

/// Herald's load generator: subscribers over several processes, targeted publishers, and the
/// figures (throughput, losses, latency, server memory and CPU).
#[derive(Debug, Parser)]
#[command(name = "herald-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Runs one benchmark against one server; prints a table, then one JSON line.
    Run(Box<RunArgs>),
    /// One table from the JSON lines of several runs, with ratios.
    Compare(CompareArgs),
    /// What one `fdatasync` costs on the disk under a directory (4 KiB appends and overwrites):
    /// prints one line with the p50 and p99 of each.
    FsyncProbe(FsyncProbeArgs),
    /// A worker process (started by `run`; reads commands on stdin).
    #[command(hide = true)]
    Worker,
}

/// `herald-bench compare`: the table on stdout, the charts (`--svg`) into their directory.
fn compare_runs(args: &CompareArgs) -> anyhow::Result<()> {
    let runs = compare::read_runs(&args.files)?;
    print!("{}", compare::render(&runs, args)?);
    if let Some(dir) = &args.svg {
        let charts = compare::charts(&runs, args)?;
        let written = compare::write_charts(dir, &charts)?;
        eprintln!("herald-bench: {} charts in {}", written.len(), dir.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Run(args) => {
            let (strict, other_limit, steal_limit) =
                (args.strict, args.disturbed_cpu_secs, args.disturbed_steal_secs);
            run::run(*args).map(|result| {
                if strict && !result.clean() {
                    eprintln!(
                        "herald-bench: lost, duplicated or misrouted deliveries, or failed connections"
                    );
                    ExitCode::FAILURE
                } else if result.disturbed(other_limit, steal_limit) {
                    eprintln!(
                        "herald-bench: other programs or the hypervisor took more CPU than allowed in a phase"
                    );
                    ExitCode::from(EXIT_DISTURBED)
                } else {
                    ExitCode::SUCCESS
                }
            })
        }
        Cmd::Compare(args) => compare_runs(&args).map(|()| ExitCode::SUCCESS),
        Cmd::FsyncProbe(args) => fsync::probe(&args).map(|probe| {
            println!("{}", probe.line());
            ExitCode::SUCCESS
        }),
        Cmd::Worker => worker::main().map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|error| {
        eprintln!("herald-bench: {error:#}");
        ExitCode::FAILURE
    })
}
