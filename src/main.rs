fn main() -> std::process::ExitCode {
    tlsplice::cli::main()
}
