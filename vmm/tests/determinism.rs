//! The same guest run twice gives the same synchronous exits, at the same ordinals and
//! RIPs, with timer interrupts delivered at the same ordinals.

mod common;
use common::*;

fn trace(name: &str, clock: &str, run: usize) -> String {
    let dir = std::env::temp_dir().join(format!("ftvm-det-{}-{name}-{run}", std::process::id()));
    let path = dir.with_extension("trace");
    run_guest(
        name,
        &["--clock", clock, "--trace-exits", path.to_str().unwrap()],
        b"",
        0,
    );
    let text = std::fs::read_to_string(&path).expect("trace written");
    let _ = std::fs::remove_file(&path);
    text
}

fn check_identical(name: &str, clock: &str) {
    let a = trace(name, clock, 1);
    let b = trace(name, clock, 2);
    let irqs = a.lines().filter(|l| l.contains(" irq ")).count();
    assert!(
        irqs >= 5,
        "{name}: expected timer interrupts in the trace, got {irqs}"
    );
    assert!(a.lines().count() > 100, "{name}: trace too short");
    if a != b {
        let first = a
            .lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(a.lines().count().min(b.lines().count()));
        panic!(
            "{name}: runs diverge at trace line {first}: {:?} vs {:?}",
            a.lines().nth(first),
            b.lines().nth(first)
        );
    }
}

#[test]
fn timer_guest_is_deterministic() {
    check_identical("timer", "exits:2000");
}

#[test]
fn usermode_guest_is_deterministic() {
    // 100 us per exit: the guest's ~150 exits span enough virtual time for timer ticks,
    // delivered at port exits made from CPL3.
    check_identical("usermode", "exits:100000");
}
