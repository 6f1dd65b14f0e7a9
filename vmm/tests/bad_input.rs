//! Bad input: each gets a one-line error naming the problem and a non-zero exit.

mod common;
use common::*;

/// Assert a failed run with exactly one line on stderr containing `needle`.
fn assert_one_line_error(out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_ne!(
        out.status.code(),
        Some(0),
        "expected failure, got {:?}: {err}",
        out.status
    );
    assert!(
        out.status.code().is_some(),
        "killed by a signal: {:?}",
        out.status
    );
    assert_eq!(err.lines().count(), 1, "want one line, got:\n{err}");
    assert!(err.starts_with("ftvm: error: "), "{err}");
    assert!(err.contains(needle), "want {needle:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("ftvm-bad-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn missing_kernel() {
    let out = run_ftvm(&["run", "--kernel", "/nonexistent/vmlinux"], b"");
    assert_one_line_error(
        &out,
        "cannot open kernel /nonexistent/vmlinux: No such file",
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn kernel_is_a_directory() {
    let out = run_ftvm(&["run", "--kernel", "/tmp"], b"");
    assert_one_line_error(&out, "cannot open kernel /tmp");
}

#[test]
fn unreadable_kernel() {
    // Root reads anything, so drop to nobody for a file only root may read.
    let path = temp_file("unreadable", b"\x7fELF");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ftvm"))
        .args(["run", "--kernel", path.to_str().unwrap()])
        .output()
        .expect("run setpriv");
    assert_one_line_error(&out, "Permission denied");
    assert!(stderr(&out).contains("cannot open kernel"));
    let _ = std::fs::remove_file(path);
}

#[test]
fn not_a_kernel() {
    let path = temp_file("text", b"this is not a kernel\n");
    let out = run_ftvm(&["run", "--kernel", path.to_str().unwrap()], b"");
    assert_one_line_error(&out, "is not a kernel");
    let _ = std::fs::remove_file(path);
}

#[test]
fn truncated_elf_is_not_a_kernel() {
    let path = temp_file("elf-head", b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    let out = run_ftvm(&["run", "--kernel", path.to_str().unwrap()], b"");
    assert_one_line_error(&out, "is not a kernel");
    let _ = std::fs::remove_file(path);
}

#[test]
fn missing_initrd() {
    let out = run_ftvm(
        &[
            "run",
            "--kernel",
            guest("timer"),
            "--initrd",
            "/nonexistent/initrd",
        ],
        b"",
    );
    assert_one_line_error(&out, "cannot read initrd /nonexistent/initrd: No such file");
}

#[test]
fn memory_too_small() {
    let out = run_ftvm(&["run", "--kernel", guest("timer"), "--mem", "1"], b"");
    assert_one_line_error(&out, "--mem 1 MiB is too small");
}

#[test]
fn memory_too_large_for_the_host() {
    let out = run_ftvm(
        &["run", "--kernel", guest("timer"), "--mem", "99999999"],
        b"",
    );
    assert_one_line_error(&out, "--mem 99999999 MiB is more than this host's");
}

#[test]
fn memory_not_a_number() {
    let out = run_ftvm(&["run", "--kernel", guest("timer"), "--mem", "lots"], b"");
    assert_one_line_error(&out, "invalid value 'lots' for '--mem <MEM>'");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn unknown_flag() {
    let out = run_ftvm(&["run", "--kernel", guest("timer"), "--frobnicate"], b"");
    assert_one_line_error(&out, "unexpected argument '--frobnicate'");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_clock() {
    let out = run_ftvm(&["run", "--kernel", guest("timer"), "--clock", "wall"], b"");
    assert_one_line_error(&out, "unknown clock 'wall'");
}

#[test]
fn no_permission_on_dev_kvm() {
    require_kvm();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_ftvm"))
        .args(["run", "--kernel", guest("timer")])
        .output()
        .expect("run setpriv");
    assert_one_line_error(&out, "cannot open /dev/kvm: Permission denied");
}
