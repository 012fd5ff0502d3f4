fn main() -> std::process::ExitCode {
    // Before anything opens a file, so only inherited descriptors are closed.
    if let Err(err) = tlsplice::sys::fd::close_inherited() {
        eprintln!("tlsplice: warning: failed to close inherited file descriptors: {err}");
    }
    tlsplice::cli::main()
}
