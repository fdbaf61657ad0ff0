fn main() -> std::process::ExitCode {
    lb_user::cli::main()
}
