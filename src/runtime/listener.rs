//! Listening sockets: one SO_REUSEPORT socket per worker and service, so the kernel
//! spreads new connections across workers with no shared accept queue.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::Address;

/// Pending connections the kernel queues per listening socket.
const BACKLOG: i32 = 1024;

/// The listeners of one service: one socket per worker.
#[derive(Debug)]
pub struct ServiceListeners {
    /// The bound address, with the port the kernel chose when the configuration
    /// asked for port 0.
    pub bound: Address,
    pub sockets: Vec<OwnedFd>,
}

/// Binds `workers` listening sockets to `address`. A TCP port of 0 is resolved by
/// the first bind, and the other sockets join that port. A UNIX socket cannot be
/// shared with SO_REUSEPORT, so its workers get duplicates of one socket.
pub fn bind(address: &Address, workers: usize) -> io::Result<ServiceListeners> {
    match address {
        Address::Inet(addr) => bind_inet(*addr, workers),
        Address::Unix(path) => {
            // A socket file left by an earlier run blocks bind. Remove it only when no
            // process accepts connections on it.
            if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                let _ = std::fs::remove_file(path);
            }
            let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
            socket.bind(&SockAddr::unix(path)?)?;
            socket.listen(BACKLOG)?;
            let socket = OwnedFd::from(socket);
            let mut sockets = Vec::with_capacity(workers);
            for _ in 1..workers {
                sockets.push(socket.try_clone()?);
            }
            sockets.push(socket);
            Ok(ServiceListeners {
                bound: address.clone(),
                sockets,
            })
        }
    }
}

/// Fails with EADDRINUSE when another socket listens on `addr`, even one that set
/// SO_REUSEPORT: a probe bound without SO_REUSEPORT cannot share the port, so a
/// second tlsplice (or any reuseport listener) cannot silently split the traffic.
fn ensure_unshared(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        probe.set_only_v6(false)?;
    }
    probe.bind(&addr.into())
}

fn bind_inet(mut addr: SocketAddr, workers: usize) -> io::Result<ServiceListeners> {
    if addr.port() != 0 {
        ensure_unshared(addr)?;
    }
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            // `[::]` from a bare port serves IPv4 clients too.
            socket.set_only_v6(false)?;
        }
        socket.bind(&addr.into())?;
        if addr.port() == 0 {
            if let Some(bound) = socket.local_addr()?.as_socket() {
                addr.set_port(bound.port());
            }
        }
        socket.listen(BACKLOG)?;
        sockets.push(OwnedFd::from(socket));
    }
    Ok(ServiceListeners {
        bound: Address::Inet(addr),
        sockets,
    })
}
