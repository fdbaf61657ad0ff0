//! The `stickylb` binary, built inside the test crate so its integration
//! tests can find it (`CARGO_BIN_EXE_stickylb-under-test`).

fn main() -> std::process::ExitCode {
    lb_user::cli::main()
}
