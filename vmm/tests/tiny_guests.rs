//! Boot each tiny guest under the real VMM and check what it prints on its serial port.

mod common;
use common::*;

#[test]
fn timer_interrupts_wake_a_halted_guest() {
    let out = run_guest("timer", &[], b"", 0);
    let text = stdout(&out);
    assert!(text.contains("timer: start"), "{text}");
    for n in [10, 20, 30, 40, 50] {
        assert!(
            text.contains(&format!("tick {n}\n")),
            "missing tick {n}: {text}"
        );
    }
    assert!(text.contains("timer: done, ticks=50"), "{text}");
    let err = stderr(&out);
    assert!(err.contains("guest powered off with status 0"), "{err}");
}

#[test]
fn timer_guest_with_deterministic_clock() {
    let out = run_guest("timer", &["--clock", "exits:1000"], b"", 0);
    assert!(stdout(&out).contains("timer: done, ticks=50"));
}

#[test]
fn serial_input_reaches_the_guest_and_echoes() {
    let out = run_guest("serial", &[], b"hello, ftvm.", 0);
    let text = stdout(&out);
    assert!(text.contains("serial: ready"), "{text}");
    assert!(text.contains("HELLO, FTVM."), "{text}");
    assert!(text.contains("serial: bye"), "{text}");
    assert!(stderr(&out).contains("guest requested a reset"));
}

#[test]
fn port_and_mmio_reads() {
    let out = run_guest("io", &["--clock", "exits:1000", "--mem", "64"], b"", 0);
    let text = stdout(&out);
    // Deterministic runs start at 2026-01-01.
    assert!(text.contains("cmos date: 26-01-01"), "{text}");
    assert!(text.contains("pit: latched"), "{text}");
    assert!(
        text.contains("i8042 self-test: 0x0000000000000055"),
        "{text}"
    );
    assert!(text.contains("sysctl magic: 0x000000004654564d"), "{text}");
    assert!(text.contains("sysctl memory: 64 MiB"), "{text}");
    assert!(
        text.contains("sysctl scratch: 0x000000001234abcd"),
        "{text}"
    );
}

/// The xorshift the user-mode guest computes, to check its result independently.
fn usermode_expected() -> u64 {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

#[test]
fn user_mode_busy_loop_runs_with_the_timer_on() {
    let out = run_guest("usermode", &[], b"", 0);
    let text = stdout(&out);
    assert!(text.contains("usermode: entering CPL3"), "{text}");
    let expected = format!("usermode: result {:#018x}", usermode_expected());
    assert!(text.contains(&expected), "want {expected}: {text}");
    assert!(text.contains("usermode: back in kernel, ticks="), "{text}");
}

#[test]
fn rdtsc_runs_natively() {
    let out = run_guest("rdtsc", &[], b"", 0);
    assert!(
        stdout(&out).contains("rdtsc: increasing"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn unknown_port_stops_the_vm_cleanly() {
    let out = run_guest("bad-port", &[], b"", 2);
    assert!(stdout(&out).contains("bad-port: reading port 0x1234"));
    let err = stderr(&out);
    assert!(
        err.contains("no device: read of 1 bytes from port 0x1234"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unknown_mmio_address_stops_the_vm_cleanly() {
    let out = run_guest("bad-mmio", &[], b"", 2);
    let err = stderr(&out);
    assert!(
        err.contains("write of 4 bytes (0x5a5a) to address 0xe0000000"),
        "{err}"
    );
}

#[test]
fn triple_fault_stops_the_vm_cleanly() {
    let out = run_guest("triple-fault", &[], b"", 2);
    assert!(stdout(&out).contains("triple-fault: ud2"));
    let err = stderr(&out);
    assert!(err.contains("triple-faulted"), "{err}");
}

#[test]
fn bzimage_kernels_boot_at_their_64_bit_entry() {
    let out = run_guest("timer.bzimage", &[], b"", 0);
    assert!(
        stdout(&out).contains("timer: done, ticks=50"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn syscall_from_user_mode_reaches_the_kernel_at_cpl0() {
    let out = run_guest("syscall", &[], b"", 0);
    let text = stdout(&out);
    assert!(!text.contains("at CPL3"), "{text}");
    assert_eq!(
        text.matches("arrived in the kernel at CPL0").count(),
        2,
        "{text}"
    );
    assert!(text.contains("back in user mode after sysret"), "{text}");
    // On hosts that need the repair it ran once per SYSCALL; elsewhere never.
    let err = stderr(&out);
    if err.contains("SYSCALL from user Broken") {
        assert!(err.contains("syscall 2,"), "{err}");
    } else {
        assert!(
            err.contains("SYSCALL from user Works") && err.contains("syscall 0,"),
            "{err}"
        );
    }
}

/// The boot phase (a longer event bound until the guest is first kicked in user mode):
/// the CPU-bound user-mode guest ends it at its first kick in CPL3, and with
/// `--boot-event-bound-ms 0` there is none.
#[test]
fn the_boot_phase_ends_at_the_first_kick_in_user_mode() {
    require_kvm();
    let run = |extra: &[&str]| {
        let out = ftvm()
            .args(["run", "--kernel", guest("spin"), "--mem", "16"])
            .args(extra)
            .env("FTVM_LOG", "info")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ftvm");
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stderr(&out)
    };
    let phased = run(&[]);
    assert!(phased.contains("boot phase over"), "{phased}");
    assert!(!phased.contains("(0 under the boot bound)"), "{phased}");
    let unphased = run(&["--boot-event-bound-ms", "0"]);
    assert!(!unphased.contains("boot phase over"), "{unphased}");
    assert!(unphased.contains("(0 under the boot bound)"), "{unphased}");
}
