//! `dragonfly`, the operator's command-line client: see the library.

fn main() -> std::process::ExitCode {
    dragonfly_cli::main()
}
