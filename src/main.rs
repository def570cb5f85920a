//! The `sentinel` binary: parse the command line and hand over to [`sentinel::cli`].

/// mimalloc instead of glibc's malloc: request handling allocates many small, short-lived
/// values (JSON trees, Block Kit replies), and mimalloc's per-thread free lists serve them
/// with less contention (measured in bench/slack.sh; see the README's benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sentinel::cli::main()
}
