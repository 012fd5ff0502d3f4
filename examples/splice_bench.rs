//! Bytes relayed per CPU-second of the splice relay in each splice mode, on
//! plain loopback TCP, so it runs on a host kernel without the tls ULP.
//!
//! Each run starts this program again as a child process that relays one
//! connection with `relay::plain` (the relay code of the kernel TLS path) in one
//! mode. The parent is the client and the backend: both send the same number of
//! bytes at once and read what the other sent. The child reads its own process
//! CPU time (every thread, io-wq threads included) before and after the relay, so
//! the peers' CPU is not counted. Runs alternate between the modes.
//!
//! Usage: splice_bench [RUNS_PER_MODE [MIB_EACH_WAY]]   (defaults 3 and 512)
//!
//! Every run is bounded: the relay fails after 120 seconds.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use tlsplice::config::SpliceMode;
use tlsplice::relay::plain::relay_plain;
use tlsplice::sys::process::process_cpu_time;

const RELAY_TIMEOUT: Duration = Duration::from_secs(120);
const CHUNK: usize = 256 * 1024;
const MAX_RUNS: usize = 20;
const MAX_MIB: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        child(&args[2], &args[3]);
        return;
    }
    let runs: usize = args
        .get(1)
        .map_or(3, |value| value.parse().expect("RUNS_PER_MODE"));
    let mib: usize = args
        .get(2)
        .map_or(512, |value| value.parse().expect("MIB_EACH_WAY"));
    assert!(
        (1..=MAX_RUNS).contains(&runs),
        "RUNS_PER_MODE must be 1 to {MAX_RUNS}"
    );
    assert!(
        (1..=MAX_MIB).contains(&mib),
        "MIB_EACH_WAY must be 1 to {MAX_MIB}"
    );

    let mut results: Vec<(&str, Vec<f64>)> = vec![("direct", Vec::new()), ("ring", Vec::new())];
    for run in 0..runs {
        for (mode, rates) in results.iter_mut() {
            let (relayed, cpu) = one_run(mode, mib * 1024 * 1024);
            let rate = relayed as f64 / (1024.0 * 1024.0) / cpu;
            println!(
                "run {} splice={mode}: {} MiB relayed in {cpu:.3} CPU-seconds, {rate:.0} MiB per CPU-second",
                run + 1,
                relayed / (1024 * 1024)
            );
            rates.push(rate);
        }
    }
    for (mode, rates) in &mut results {
        rates.sort_by(f64::total_cmp);
        println!(
            "splice={mode}: median {:.0} MiB per CPU-second, min {:.0}, max {:.0}, {} runs",
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1],
            rates.len()
        );
    }
}

/// Runs one relay child in `mode` with `bytes` each way; returns the bytes it
/// relayed in both directions and its CPU-seconds.
fn one_run(mode: &str, bytes: usize) -> (u64, f64) {
    let backend_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--child",
            mode,
            &backend_listener.local_addr().unwrap().to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (backend, _) = backend_listener.accept().unwrap();
    let client_addr = lines.next().unwrap().unwrap();
    let client = TcpStream::connect(client_addr.trim()).unwrap();

    let peers = [
        stream_both_ways(client, bytes),
        stream_both_ways(backend, bytes),
    ];
    for peer in peers {
        assert_eq!(
            peer.join().unwrap(),
            bytes,
            "a peer received a short stream"
        );
    }
    let report = lines.next().unwrap().unwrap();
    assert!(child.wait().unwrap().success(), "the relay child failed");

    // "RELAYED CPU_SECONDS"
    let mut fields = report.split_whitespace();
    let relayed = fields.next().unwrap().parse().unwrap();
    let cpu = fields.next().unwrap().parse().unwrap();
    (relayed, cpu)
}

/// Sends `bytes` on `stream` and then FIN, while reading to end of stream on a
/// second thread. The handle returns the bytes received.
fn stream_both_ways(stream: TcpStream, bytes: usize) -> thread::JoinHandle<usize> {
    let mut reader = stream.try_clone().unwrap();
    let mut writer = stream;
    let receiving = thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut received = 0;
        loop {
            match reader.read(&mut buf).unwrap() {
                0 => return received,
                n => received += n,
            }
        }
    });
    thread::spawn(move || {
        let buf = vec![0x5au8; CHUNK];
        let mut sent = 0;
        while sent < bytes {
            let len = CHUNK.min(bytes - sent);
            writer.write_all(&buf[..len]).unwrap();
            sent += len;
        }
        writer.shutdown(Shutdown::Write).unwrap();
        receiving.join().unwrap()
    })
}

/// Runs the relay process: connects to the backend, prints the address it
/// accepts the client on, relays one connection and prints
/// "RELAYED CPU_SECONDS".
fn child(mode: &str, backend_addr: &str) {
    let mode = match mode {
        "direct" => SpliceMode::Direct,
        "ring" => SpliceMode::Ring,
        other => panic!("unknown splice mode {other}"),
    };
    let backend = TcpStream::connect(backend_addr).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    let (client, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    backend.set_nonblocking(true).unwrap();

    let before = process_cpu_time();
    let relayed = relay_plain(client.as_fd(), backend.as_fd(), mode, RELAY_TIMEOUT).unwrap();
    let used = process_cpu_time() - before;
    println!("{} {:.6}", relayed.up + relayed.down, used.as_secs_f64());
}
