//! Syscalls for kernel TLS (kTLS) and splice(2).
//!
//! The constants and `#[repr(C)]` structs follow `include/uapi/linux/tls.h`. The
//! wrappers do no TLS logic: choosing keys, sequence numbers and record types is
//! the job of [`crate::tls::kernel`]. Every function takes the file descriptor it
//! acts on and returns the raw `io::Result`, so `WouldBlock` on a non-blocking
//! descriptor reaches the caller unchanged.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use zeroize::Zeroize;

/// `SOL_TLS`, the socket option level of kernel TLS.
pub const SOL_TLS: libc::c_int = 282;
/// `TLS_TX`: install the transmit keys.
pub const TLS_TX: libc::c_int = 1;
/// `TLS_RX`: install the receive keys.
pub const TLS_RX: libc::c_int = 2;
/// Control message type that sets the record type of a sendmsg(2).
pub const TLS_SET_RECORD_TYPE: libc::c_int = 1;
/// Control message type that carries the record type of a recvmsg(2).
pub const TLS_GET_RECORD_TYPE: libc::c_int = 2;

/// `TLS_1_2_VERSION` in `tls_crypto_info.version`.
pub const TLS_1_2_VERSION: u16 = 0x0303;
/// `TLS_1_3_VERSION` in `tls_crypto_info.version`.
pub const TLS_1_3_VERSION: u16 = 0x0304;

/// `TLS_CIPHER_AES_GCM_128`.
pub const TLS_CIPHER_AES_GCM_128: u16 = 51;
/// `TLS_CIPHER_AES_GCM_256`.
pub const TLS_CIPHER_AES_GCM_256: u16 = 52;
/// `TLS_CIPHER_CHACHA20_POLY1305`.
pub const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// `struct tls_crypto_info`, the header of every cipher's crypto info.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoInfoHeader {
    pub version: u16,
    pub cipher_type: u16,
}

/// `struct tls12_crypto_info_aes_gcm_128`, used for TLS 1.2 and TLS 1.3.
#[repr(C)]
#[derive(Clone)]
pub struct AesGcm128CryptoInfo {
    pub header: CryptoInfoHeader,
    pub iv: [u8; 8],
    pub key: [u8; 16],
    pub salt: [u8; 4],
    pub rec_seq: [u8; 8],
}

/// `struct tls12_crypto_info_aes_gcm_256`, used for TLS 1.2 and TLS 1.3.
#[repr(C)]
#[derive(Clone)]
pub struct AesGcm256CryptoInfo {
    pub header: CryptoInfoHeader,
    pub iv: [u8; 8],
    pub key: [u8; 32],
    pub salt: [u8; 4],
    pub rec_seq: [u8; 8],
}

/// `struct tls12_crypto_info_chacha20_poly1305`, used for TLS 1.2 and TLS 1.3.
/// The kernel struct has a zero-length `salt` array, so it is omitted here.
#[repr(C)]
#[derive(Clone)]
pub struct Chacha20Poly1305CryptoInfo {
    pub header: CryptoInfoHeader,
    pub iv: [u8; 12],
    pub key: [u8; 32],
    pub rec_seq: [u8; 8],
}

/// The crypto info for one direction of a kTLS socket. The key and IV are
/// zeroed on drop.
#[derive(Clone)]
pub enum CryptoInfo {
    AesGcm128(AesGcm128CryptoInfo),
    AesGcm256(AesGcm256CryptoInfo),
    Chacha20Poly1305(Chacha20Poly1305CryptoInfo),
}

impl CryptoInfo {
    /// Returns the `tls_crypto_info` header that starts the struct.
    pub fn header(&self) -> CryptoInfoHeader {
        match self {
            Self::AesGcm128(info) => info.header,
            Self::AesGcm256(info) => info.header,
            Self::Chacha20Poly1305(info) => info.header,
        }
    }

    fn as_ptr_and_len(&self) -> (*const libc::c_void, libc::socklen_t) {
        fn raw<T>(value: &T) -> (*const libc::c_void, libc::socklen_t) {
            (
                (value as *const T).cast(),
                mem::size_of::<T>() as libc::socklen_t,
            )
        }

        match self {
            Self::AesGcm128(info) => raw(info),
            Self::AesGcm256(info) => raw(info),
            Self::Chacha20Poly1305(info) => raw(info),
        }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        match self {
            Self::AesGcm128(info) => {
                info.key.zeroize();
                info.iv.zeroize();
                info.salt.zeroize();
            }
            Self::AesGcm256(info) => {
                info.key.zeroize();
                info.iv.zeroize();
                info.salt.zeroize();
            }
            Self::Chacha20Poly1305(info) => {
                info.key.zeroize();
                info.iv.zeroize();
            }
        }
    }
}

/// The direction a crypto info applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsDirection {
    Transmit,
    Receive,
}

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn check_size(result: libc::ssize_t) -> io::Result<usize> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result as usize)
    }
}

/// Attaches the "tls" upper layer protocol to a TCP socket (`TCP_ULP`). The
/// socket must be connected; the kernel rejects a listening or unconnected
/// socket with `ENOTCONN`. A kernel without the tls module returns `ENOENT`.
pub fn set_tcp_ulp_tls(fd: BorrowedFd<'_>) -> io::Result<()> {
    let name = b"tls";
    // SAFETY: `name` is a live 3-byte buffer and the length passed matches it.
    let result = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    check(result).map(drop)
}

/// Installs the keys for one direction (`SOL_TLS` / `TLS_TX` or `TLS_RX`). The
/// socket must already have the tls ULP. Kernels before the TLS 1.3 re-key
/// support return `EBUSY` when a direction is set a second time.
pub fn set_crypto_info(
    fd: BorrowedFd<'_>,
    direction: TlsDirection,
    info: &CryptoInfo,
) -> io::Result<()> {
    let option = match direction {
        TlsDirection::Transmit => TLS_TX,
        TlsDirection::Receive => TLS_RX,
    };
    let (pointer, len) = info.as_ptr_and_len();
    // SAFETY: `pointer` and `len` describe one of the `#[repr(C)]` crypto info
    // structs borrowed by `info`, which outlives the call.
    let result = unsafe { libc::setsockopt(fd.as_raw_fd(), SOL_TLS, option, pointer, len) };
    check(result).map(drop)
}

/// Space for one control message carrying a one-byte record type.
const RECORD_TYPE_CMSG_SPACE: usize = 64;

/// A control message buffer with the alignment `cmsghdr` requires.
#[repr(C, align(8))]
struct CmsgBuffer([u8; RECORD_TYPE_CMSG_SPACE]);

/// Receives from a kTLS socket with recvmsg(2) and returns the byte count and
/// the TLS record type from the `TLS_GET_RECORD_TYPE` control message. The
/// kernel returns data from one record type per call. The record type is
/// `None` when the kernel attached no control message, as at end of file.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<u8>)> {
    let mut control = CmsgBuffer([0; RECORD_TYPE_CMSG_SPACE]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `msghdr` is a plain C struct for which all-zero bytes are valid.
    let mut message: libc::msghdr = unsafe { mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.0.as_mut_ptr().cast();
    message.msg_controllen = control.0.len() as _;

    // SAFETY: `message` points at `iov` (which describes `buf`) and at
    // `control`; all three stay alive and exclusively borrowed during the call.
    let received = check_size(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut message, 0) })?;

    let mut record_type = None;
    // SAFETY: `message` was filled in by a successful recvmsg, so the CMSG_*
    // macros walk headers inside `control`, bounded by `msg_controllen`.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == SOL_TLS
                && (*header).cmsg_type == TLS_GET_RECORD_TYPE
                && (*header).cmsg_len as usize >= libc::CMSG_LEN(1) as usize
            {
                record_type = Some(*libc::CMSG_DATA(header));
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok((received, record_type))
}

/// Sends `data` as one record of `record_type` through a kTLS socket with a
/// `TLS_SET_RECORD_TYPE` control message (for alerts and post-handshake
/// handshake messages). Uses `MSG_NOSIGNAL`, so a closed peer returns `EPIPE`
/// and raises no signal.
pub fn send_record(fd: BorrowedFd<'_>, record_type: u8, data: &[u8]) -> io::Result<usize> {
    let mut control = CmsgBuffer([0; RECORD_TYPE_CMSG_SPACE]);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: `msghdr` is a plain C struct for which all-zero bytes are valid.
    let mut message: libc::msghdr = unsafe { mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    message.msg_controllen = unsafe { libc::CMSG_SPACE(1) } as _;

    // SAFETY: `msg_controllen` is at most the size of `control`, so the first
    // header and its one data byte lie inside `control`.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = SOL_TLS;
        (*header).cmsg_type = TLS_SET_RECORD_TYPE;
        (*header).cmsg_len = libc::CMSG_LEN(1) as _;
        *libc::CMSG_DATA(header) = record_type;
    }

    // SAFETY: `message` points at `iov` (which describes `data`, only read by
    // the kernel) and at `control`; both outlive the call.
    check_size(unsafe { libc::sendmsg(fd.as_raw_fd(), &message, libc::MSG_NOSIGNAL) })
}

/// Creates a pipe with `O_NONBLOCK | O_CLOEXEC` and returns (read end, write end).
pub fn pipe_nonblocking() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two descriptors, as pipe2 requires.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded, so both descriptors are open and have no other owner.
    let ends = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(ends)
}

/// Sets a pipe's capacity with `F_SETPIPE_SZ` and returns the capacity the
/// kernel chose (a power-of-two number of pages, at least `bytes`).
/// Unprivileged callers get `EPERM` above `/proc/sys/fs/pipe-max-size`.
pub fn set_pipe_size(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let bytes =
        libc::c_int::try_from(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_SETPIPE_SZ takes an int argument and touches no user memory.
    let result = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
    check(result).map(|size| size as usize)
}

/// Returns a pipe's capacity in bytes (`F_GETPIPE_SZ`).
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: F_GETPIPE_SZ takes no argument and touches no user memory.
    let result = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    check(result).map(|size| size as usize)
}

/// Moves up to `len` bytes between a pipe and another descriptor with
/// splice(2), flags `SPLICE_F_NONBLOCK | SPLICE_F_MOVE` (plus `SPLICE_F_MORE`
/// when `more` is set). Returns 0 at end of input. On a kTLS socket whose next
/// record is not application data, the kernel fails the call (`EINVAL` on
/// Linux 6.1); read that record with [`recv_record`].
pub fn splice(
    fd_in: BorrowedFd<'_>,
    fd_out: BorrowedFd<'_>,
    len: usize,
    more: bool,
) -> io::Result<usize> {
    let mut flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    if more {
        flags |= libc::SPLICE_F_MORE;
    }
    // SAFETY: null offsets make the kernel use and advance the file positions,
    // so no user memory is passed.
    let result = unsafe {
        libc::splice(
            fd_in.as_raw_fd(),
            std::ptr::null_mut(),
            fd_out.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    check_size(result)
}

/// Waits with poll(2) until one of `fds` is ready or `timeout_ms` passes
/// (negative waits forever), and returns the number of ready entries. For
/// probes and blocking test drivers; the runtime waits through io_uring.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd and its
    // length is passed with it.
    let result = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    check(result).map(|ready| ready as usize)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn crypto_info_sizes_match_linux_uapi() {
        assert_eq!(mem::size_of::<CryptoInfoHeader>(), 4);
        assert_eq!(mem::size_of::<AesGcm128CryptoInfo>(), 40);
        assert_eq!(mem::size_of::<AesGcm256CryptoInfo>(), 56);
        assert_eq!(mem::size_of::<Chacha20Poly1305CryptoInfo>(), 56);
    }

    #[test]
    fn pipe_size_round_trips() {
        let (read_end, _write_end) = pipe_nonblocking().unwrap();
        let size = set_pipe_size(read_end.as_fd(), 256 * 1024).unwrap();
        assert!(size >= 256 * 1024);
        assert_eq!(pipe_size(read_end.as_fd()).unwrap(), size);
    }
}
