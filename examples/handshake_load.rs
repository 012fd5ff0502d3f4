//! A bounded handshake load for measuring handshakes per CPU-second of a running
//! tlsplice: full TLS 1.3 handshakes without resumption from a few client threads,
//! and the CPU time of tlsplice's whole process tree (parent, key process and
//! workers) read from /proc before and after.
//!
//! Usage: handshake_load ADDR SERVER_NAME CA_PEM TLSPLICE_PID COUNT THREADS
//!
//! The run stops after COUNT handshakes or 60 seconds, whichever comes first.
//! Only aim it at a tlsplice you started on loopback.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const MAX_RUN: Duration = Duration::from_secs(60);

/// utime + stime of `pid` and of its children, in clock ticks.
fn tree_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let own = fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    let mut children = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in text.split_whitespace() {
                children += tree_ticks(child.parse().unwrap());
            }
        }
    }
    own + children
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!("usage: handshake_load ADDR SERVER_NAME CA_PEM TLSPLICE_PID COUNT THREADS");
        std::process::exit(2);
    }
    let addr: std::net::SocketAddr = args[1].parse().expect("ADDR is host:port");
    let name = ServerName::try_from(args[2].clone()).expect("SERVER_NAME is a DNS name");
    let ca = CertificateDer::from_pem_file(&args[3]).expect("CA_PEM contains a PEM certificate");
    let pid: u32 = args[4].parse().expect("TLSPLICE_PID is a number");
    let count: usize = args[5].parse().expect("COUNT is a number");
    let threads: usize = args[6].parse().expect("THREADS is a number");

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let config = Arc::new(config);

    let ticks_per_second = 100.0; // USER_HZ on Linux.
    let started = Instant::now();
    let ticks_before = tree_ticks(pid);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (config, name, next, failed) =
                (config.clone(), name.clone(), next.clone(), failed.clone());
            std::thread::spawn(move || {
                while next.fetch_add(1, Ordering::Relaxed) < count && started.elapsed() < MAX_RUN {
                    if handshake(addr, &config, &name).is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (tree_ticks(pid) - ticks_before) as f64 / ticks_per_second;
    let done = next.load(Ordering::Relaxed).min(count) - failed.load(Ordering::Relaxed);
    println!(
        "handshakes={done} failed={} wall_s={elapsed:.2} tlsplice_cpu_s={cpu:.2} per_cpu_s={:.0} per_wall_s={:.0}",
        failed.load(Ordering::Relaxed),
        done as f64 / cpu,
        done as f64 / elapsed
    );
}

fn handshake(
    addr: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    name: &ServerName<'static>,
) -> std::io::Result<()> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut conn = rustls::ClientConnection::new(config.clone(), name.clone())
        .map_err(std::io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)?;
    }
    conn.send_close_notify();
    conn.complete_io(&mut tcp)?;
    tcp.flush()
}
