//! The `spindle` binary: a thin shell over the `spindle` library's hosts.

fn main() -> std::process::ExitCode {
    spindle::cli::main()
}
