//! The `sentinel` binary: parse the command line and hand over to [`sentinel::cli`].

fn main() -> std::process::ExitCode {
    sentinel::cli::main()
}
