fn main() -> std::process::ExitCode {
    cellbench::cli::main()
}
