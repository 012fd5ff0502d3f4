//! Cost of the per-connection recording calls and of `publish`.
//!
//! Run with `cargo bench --bench metrics`; results are in `perf/metrics.md`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use rustls::{CipherSuite, ProtocolVersion};
use tlsplice::log::CloseReason;
use tlsplice::metrics::{DataPath, Registry, WorkerMetrics};

const SERVICES: usize = 4;

fn worker() -> (Registry, WorkerMetrics) {
    let names = (0..SERVICES).map(|i| format!("service{i}")).collect();
    let registry = Registry::new(names);
    let worker = registry.register_worker();
    (registry, worker)
}

/// Records one full connection: the calls a worker makes over a connection's life.
fn record_connection(worker: &mut WorkerMetrics, i: u64) {
    let service = (i % SERVICES as u64) as usize;
    // Spread values over several decades so the histograms see realistic indexes.
    let micros = 50 + (i * 7919) % 2_000_000;
    worker.accepted(service);
    worker.handshake_done(
        service,
        Duration::from_micros(micros),
        ProtocolVersion::TLSv1_3,
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    );
    worker.backend_connected(service, Duration::from_micros(micros / 3));
    worker.first_byte(service, Duration::from_micros(micros / 2));
    worker.closed(
        service,
        CloseReason::Done,
        Duration::from_micros(micros * 40),
        i * 131 % 10_000_000,
        i * 977 % 100_000_000,
        DataPath::Ktls,
    );
}

fn bench_recording(c: &mut Criterion) {
    let (_registry, mut worker) = worker();
    // Grow the histograms first so the loop measures steady-state recording.
    for i in 0..100_000 {
        record_connection(&mut worker, i);
    }

    let mut i = 0u64;
    c.bench_function("record one connection (6 calls)", |b| {
        b.iter(|| {
            i += 1;
            record_connection(black_box(&mut worker), i);
        })
    });

    c.bench_function("handshake_done", |b| {
        b.iter(|| {
            i += 1;
            worker.handshake_done(
                black_box(1),
                black_box(Duration::from_micros(50 + i % 100_000)),
                ProtocolVersion::TLSv1_3,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
            );
        })
    });
}

fn bench_publish(c: &mut Criterion) {
    let (registry, mut worker) = worker();
    for i in 0..100_000 {
        record_connection(&mut worker, i);
    }
    worker.publish();
    registry.collect();

    c.bench_function("publish, unchanged", |b| {
        b.iter(|| black_box(worker.publish()))
    });

    // Only the publish call is timed, so this measures the swap that a worker
    // does when a Collector keeps up.
    let mut i = 0u64;
    for services in [1, SERVICES] {
        let name = format!("publish after collect, {services} services changed");
        c.bench_function(&name, |b| {
            b.iter_custom(|iterations| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    registry.collect();
                    for _ in 0..services {
                        i += 1;
                        record_connection(&mut worker, i);
                    }
                    let start = Instant::now();
                    black_box(worker.publish());
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });
    }

    // Without a collect between publishes, the worker adds its values to the
    // uncollected ones and zeroes its own.
    c.bench_function("publish uncollected, 1 service changed", |b| {
        b.iter_custom(|iterations| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iterations {
                i += 1;
                record_connection(&mut worker, i * SERVICES as u64);
                let start = Instant::now();
                black_box(worker.publish());
                elapsed += start.elapsed();
            }
            elapsed
        })
    });
}

fn bench_snapshot(c: &mut Criterion) {
    let (registry, mut worker) = worker();
    for i in 0..100_000 {
        record_connection(&mut worker, i);
    }
    worker.publish();
    c.bench_function("registry snapshot, 1 worker, 4 services", |b| {
        b.iter(|| black_box(registry.snapshot()))
    });
}

criterion_group!(benches, bench_recording, bench_publish, bench_snapshot);
criterion_main!(benches);
