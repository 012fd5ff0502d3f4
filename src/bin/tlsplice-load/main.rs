//! `tlsplice-load`: a TLS load generator for benchmarking TLS terminators.
//!
//! Every mode stops by itself after `--duration` seconds or `--requests` requests,
//! prints its result as one JSON object on stdout and a one-line summary on stderr.

#![forbid(unsafe_code)]

mod client;
mod http;
mod report;
mod sink;
mod stream;
mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rustls::pki_types::ServerName;

use client::{Budget, Plan, RequestTemplate, Workload};

#[derive(Parser)]
#[command(
    name = "tlsplice-load",
    version,
    about = "TLS load generator for benchmarking TLS terminators"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open a new TLS connection per request; report handshakes per second.
    Handshake {
        #[command(flatten)]
        common: ClientArgs,
        /// Connections in flight at the same time.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Resume sessions with TLS session tickets after the first handshake.
        #[arg(long)]
        resume: bool,
    },
    /// Send requests back to back over keep-alive connections; report requests per second.
    Keepalive {
        #[command(flatten)]
        common: ClientArgs,
        /// Number of keep-alive connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
    },
    /// Download or upload large bodies over keep-alive connections; report throughput.
    Bulk {
        #[command(flatten)]
        common: ClientArgs,
        /// Number of connections transferring at the same time.
        #[arg(long, default_value_t = 4)]
        connections: usize,
        /// Transfer direction.
        #[arg(long, value_enum, default_value_t = Direction::Download)]
        direction: Direction,
        /// Upload body size in bytes (upload only; a download's size is set by the server).
        #[arg(long, default_value_t = 64 * 1024 * 1024)]
        bytes: u64,
    },
    /// Send requests at a fixed rate (open loop); report latency from each request's intended start.
    Latency {
        #[command(flatten)]
        common: ClientArgs,
        /// Target request rate, in requests per second.
        #[arg(long)]
        rate: f64,
        /// Number of keep-alive connections in the pool.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Open many connections and keep them open with one light request per interval.
    Hold {
        #[command(flatten)]
        common: ClientArgs,
        /// Number of connections to hold open.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds between two requests on one connection.
        #[arg(long, default_value_t = 5.0)]
        interval: f64,
        /// New connections per second while opening (at most 128 handshakes in progress per thread).
        #[arg(long, default_value_t = 2000.0)]
        ramp_rate: f64,
        /// Seconds to keep the connections once all are established; --duration still caps the run.
        #[arg(long)]
        hold: Option<f64>,
    },
    /// Run a small HTTP/1.1 backend that serves GET /bytes/N and drops request bodies.
    Sink {
        /// Address to listen on, such as 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        listen: SocketAddr,
        /// Certificate chain (PEM) for TLS; without it the sink speaks plain HTTP.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Private key (PEM) for TLS.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// Seconds to serve before exiting.
        #[arg(long, default_value_t = 600.0)]
        duration: f64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Direction {
    Download,
    Upload,
}

#[derive(Args)]
struct ClientArgs {
    /// Server address, such as 127.0.0.1:8443.
    #[arg(long)]
    connect: String,
    /// Allow a target outside the loopback range. Point load only at servers you run.
    #[arg(long)]
    allow_remote: bool,
    /// TLS server name (SNI), also the default Host header.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Host header; defaults to the server name.
    #[arg(long)]
    host: Option<String>,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// Accept any server certificate and handshake signature.
    #[arg(long, conflicts_with = "cafile")]
    insecure: bool,
    /// Verify the server certificate against the CA certificates in this PEM file.
    #[arg(long)]
    cafile: Option<PathBuf>,
    /// Offer only TLS 1.2 (the default offers only TLS 1.3).
    #[arg(long)]
    tls12: bool,
    /// Send plain HTTP over TCP, without TLS.
    #[arg(long, conflicts_with_all = ["insecure", "cafile", "tls12"])]
    plain: bool,
    /// Worker threads, each with its own event loop.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds to run before stopping. In-flight requests then get up to 5 more seconds,
    /// except in the bulk mode, which stops its transfers at once.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests (in the handshake mode: connections).
    #[arg(long)]
    requests: Option<u64>,
    /// Seconds allowed for connect plus handshake, and for each request.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tlsplice-load: error: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen mode. Exits 0 when every request succeeded, 1 when some failed.
fn run(cli: Cli) -> Result<ExitCode, String> {
    let (name, common, workload, method, body_len, resume) = match cli.mode {
        Mode::Sink {
            listen,
            cert,
            key,
            duration,
        } => return run_sink(listen, cert, key, duration),
        Mode::Handshake {
            common,
            concurrency,
            resume,
        } => (
            "handshake",
            common,
            Workload::Handshake {
                concurrency: positive(concurrency, "--concurrency")?,
            },
            "GET",
            0,
            resume,
        ),
        Mode::Keepalive {
            common,
            connections,
        } => (
            "keepalive",
            common,
            Workload::KeepAlive {
                connections: positive(connections, "--connections")?,
            },
            "GET",
            0,
            false,
        ),
        Mode::Bulk {
            common,
            connections,
            direction,
            bytes,
        } => {
            let workload = Workload::KeepAlive {
                connections: positive(connections, "--connections")?,
            };
            match direction {
                Direction::Download => ("bulk-download", common, workload, "GET", 0, false),
                Direction::Upload => ("bulk-upload", common, workload, "POST", bytes, false),
            }
        }
        Mode::Latency {
            common,
            rate,
            connections,
        } => {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(format!(
                    "invalid --rate {rate}: expected a positive number of requests per second"
                ));
            }
            let connections = positive(connections, "--connections")?;
            (
                "latency",
                common,
                Workload::Latency { connections, rate },
                "GET",
                0,
                false,
            )
        }
        Mode::Hold {
            common,
            connections,
            interval,
            ramp_rate,
            hold,
        } => {
            let workload = Workload::Hold {
                connections: positive(connections, "--connections")?,
                interval: seconds(interval, "--interval")?,
                ramp_rate: if ramp_rate > 0.0 {
                    ramp_rate
                } else {
                    return Err(format!(
                        "invalid --ramp-rate {ramp_rate}: expected a positive number"
                    ));
                },
                hold: hold.map(|h| seconds(h, "--hold")).transpose()?,
            };
            ("hold", common, workload, "GET", 0, false)
        }
    };

    let mut plan = build_plan(common, workload, method, body_len, resume)?;
    plan.cut_at_deadline = name.starts_with("bulk");
    let (stats, elapsed) =
        client::run(Arc::new(plan)).map_err(|e| format!("load run failed: {e}"))?;

    let report = stats.to_json(name, elapsed);
    println!("{report}");
    eprintln!(
        "tlsplice-load: {name}: {:.1} s, {} handshakes ({} resumed), {} requests, {:.0} requests/s, {:.1} MB/s, {} errors",
        elapsed.as_secs_f64(),
        stats.handshakes_full + stats.handshakes_resumed,
        stats.handshakes_resumed,
        stats.requests,
        report["requests_per_s"].as_f64().unwrap_or(0.0),
        report["throughput_bytes_per_s"].as_f64().unwrap_or(0.0) / 1e6,
        stats.error_total()
    );
    for (kind, detail) in &stats.first_errors {
        eprintln!("tlsplice-load: first {kind} error: {detail}");
    }
    Ok(if stats.error_total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn build_plan(
    common: ClientArgs,
    workload: Workload,
    method: &str,
    body_len: u64,
    resume: bool,
) -> Result<Plan, String> {
    let addr = resolve(&common.connect)?;
    if !addr.ip().is_loopback() && !common.allow_remote {
        return Err(format!(
            "--connect {addr} is not a loopback address; pass --allow-remote to load a server you run elsewhere"
        ));
    }

    let tls = if common.plain {
        None
    } else {
        let verification = match (&common.cafile, common.insecure) {
            (Some(path), _) => tls::Verification::CaFile(path.clone()),
            (None, true) => tls::Verification::Insecure,
            (None, false) => return Err("missing --cafile PATH or --insecure: the client needs a way to check the server certificate".into()),
        };
        Some(tls::client_config(&tls::ClientTls {
            verification,
            tls12_only: common.tls12,
            resume,
        })?)
    };
    let server_name = ServerName::try_from(common.server_name.clone())
        .map_err(|e| format!("invalid --server-name {}: {e}", common.server_name))?;

    Ok(Plan {
        workload,
        addr,
        tls,
        server_name,
        request: RequestTemplate {
            method: method.to_string(),
            path: common.path,
            host: common.host.unwrap_or(common.server_name),
            body_len,
        },
        timeout: seconds(common.timeout, "--timeout")?,
        duration: seconds(common.duration, "--duration")?,
        budget: Budget::new(common.requests),
        threads: positive(common.threads, "--threads")?,
        cut_at_deadline: false,
    })
}

fn run_sink(
    listen: SocketAddr,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    duration: f64,
) -> Result<ExitCode, String> {
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(tls::server_config(&cert, &key)?),
        _ => None,
    };
    let options = sink::SinkOptions {
        listen,
        tls,
        duration: seconds(duration, "--duration")?,
    };
    sink::run(&options).map_err(|e| format!("sink on {listen} failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn resolve(address: &str) -> Result<SocketAddr, String> {
    address
        .to_socket_addrs()
        .map_err(|e| format!("invalid --connect {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("invalid --connect {address}: no address found"))
}

fn positive(value: usize, flag: &str) -> Result<usize, String> {
    if value == 0 {
        return Err(format!("invalid {flag} 0: expected at least 1"));
    }
    Ok(value)
}

fn seconds(value: f64, flag: &str) -> Result<Duration, String> {
    if !(value.is_finite() && value > 0.0) {
        return Err(format!(
            "invalid {flag} {value}: expected a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}
