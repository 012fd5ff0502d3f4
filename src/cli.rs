//! Command-line interface: flags, the `--check` mode, and exit codes.
//!
//! Exit codes:
//! - 0: success (or a clean stop after SIGTERM or SIGINT);
//! - 1: a failure while running;
//! - 2: invalid command-line usage;
//! - 3: invalid configuration, certificate or key;
//! - 4: start-up failed: io_uring unavailable, an address in use, a privilege
//!   step, the log file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::{Config, Flags};
use crate::runtime::{self, RunError};

pub const EXIT_RUNTIME: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_CONFIG: u8 = 3;
pub const EXIT_STARTUP: i32 = 4;

/// TLS terminator for Linux: rustls handshakes, an io_uring worker per CPU, and
/// stunnel's configuration format.
#[derive(Debug, Parser)]
#[command(name = "tlsplice", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success, 1 failure while running, 2 usage error, \
3 invalid configuration, 4 start-up failure (io_uring, address in use, privileges, log file)."
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// stunnel-format configuration file to run.
    #[arg(value_name = "CONFIG", conflicts_with_all = ["accept", "connect"])]
    pub config: Option<PathBuf>,

    /// Validate CONFIG, load its certificates and keys, and exit.
    #[arg(long, value_name = "CONFIG", conflicts_with_all = ["accept", "connect"])]
    pub check: Option<PathBuf>,

    /// Address to accept TLS on: host:port, [v6]:port, a bare port, or a UNIX
    /// socket path.
    #[arg(long, value_name = "ADDR", requires = "connect")]
    pub accept: Option<String>,

    /// Backend address for the plaintext stream, in the same forms as --accept.
    #[arg(long, value_name = "ADDR", requires = "accept")]
    pub connect: Option<String>,

    /// PEM certificate chain. Without it, a self-signed certificate for
    /// localhost is generated in memory.
    #[arg(long, value_name = "FILE", requires = "accept")]
    pub cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, SEC1 or PKCS#1); defaults to the --cert file.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Worker threads; default one per CPU. Overrides the file's `threads`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Stay in the foreground and log to stderr unless `output` is set.
    #[arg(long)]
    pub foreground: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Rewrite a backend access log with the real client addresses, joined from
    /// tlsplice's connection log by the backend-side port and time.
    Correlate(crate::correlate::CorrelateArgs),
}

/// Parses the command line and runs; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(Command::Correlate(args)) = cli.command {
        return match crate::correlate::run(&args) {
            Ok(_) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("tlsplice correlate: {err}");
                ExitCode::from(EXIT_RUNTIME)
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tlsplice: {err}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn exit_code(err: &RunError) -> u8 {
    match err {
        RunError::Config(_) => EXIT_CONFIG,
        RunError::IoUringUnavailable(_)
        | RunError::Bind { .. }
        | RunError::Privileges(_)
        | RunError::KtlsUnavailable { .. }
        | RunError::Io { .. } => EXIT_STARTUP as u8,
        RunError::Worker(_) => EXIT_RUNTIME,
    }
}

/// Counts the services and SNI routes of `config`, such as `2 services, 1 SNI
/// route`, so that `--check` shows that every section was read.
fn section_summary(config: &Config) -> String {
    let plural = |count: usize, noun: &str| {
        let suffix = if count == 1 { "" } else { "s" };
        format!("{count} {noun}{suffix}")
    };
    let services = config.services.len();
    let routes: usize = config
        .services
        .iter()
        .map(|service| service.sni.len())
        .sum();
    if routes == 0 {
        plural(services, "service")
    } else {
        format!(
            "{}, {}",
            plural(services, "service"),
            plural(routes, "SNI route")
        )
    }
}

fn run(cli: Cli) -> Result<(), RunError> {
    if let Some(path) = &cli.check {
        let config = crate::config::parse_file(path)?;
        runtime::load_services(&config)?;
        println!(
            "{}: configuration is valid ({})",
            path.display(),
            section_summary(&config)
        );
        return Ok(());
    }

    let mut config = match (&cli.config, &cli.accept) {
        (Some(path), _) => crate::config::parse_file(path)?,
        (None, Some(accept)) => Config::from_flags(&Flags {
            accept: accept.clone(),
            connect: cli.connect.clone().unwrap_or_default(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
            threads: cli.threads.map(usize::from),
            foreground: true,
        })?,
        (None, None) => {
            eprintln!(
                "tlsplice: nothing to run; give a configuration file (tlsplice CONFIG) or --accept and --connect. See --help"
            );
            std::process::exit(i32::from(EXIT_USAGE));
        }
    };
    if let Some(threads) = cli.threads {
        config.global.threads = Some(usize::from(threads));
    }
    if cli.foreground {
        config.global.foreground = true;
    }
    runtime::run(config)
}
