//! The XDP program is this package's binary, `stickylb-xdp`. This library
//! holds what every XDP object needs (the benchmark's reference programs in
//! tests/bench-ebpf use it too), and lets lb-user list lb-ebpf as a build
//! dependency, so that cargo rebuilds lb-user (which embeds the object) when
//! it changes.
#![no_std]

/// The items every XDP object needs besides its program: a panic handler
/// (`no_std` requires one; the verifier proves panics unreachable) and the
/// license section, since the verifier only lets GPL-compatible programs use
/// some helpers.
#[macro_export]
macro_rules! program_boilerplate {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
