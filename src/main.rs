//! A shim: everything lives in the library.

fn main() -> std::process::ExitCode {
    triggers_api::cli::main()
}
