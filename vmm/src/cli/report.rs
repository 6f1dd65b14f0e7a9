//! What a VMM prints when its guest stops, and the exit status that follows from it.

use std::time::Instant;

/// Print what a run did; returns its exit status.
pub(crate) fn summarise(
    report: &ftvm::vcpu::VcpuReport,
    started: Instant,
    syscall_probe: Option<ftvm::compat::syscall::SyscallProbe>,
) -> i32 {
    let m = &report.metrics;
    eprintln!(
        "ftvm: {} after {} exits in {:.3} s (pio in/out {}/{}, mmio r/w {}/{}, hlt {}, interrupts {} ({} after a kick), host exits {}, kicks sent {} ({} under the boot bound); host repairs: {}; SYSCALL from user {}; event points: {})",
        report.stop,
        report.ordinal,
        started.elapsed().as_secs_f64(),
        m.pio_in,
        m.pio_out,
        m.mmio_read,
        m.mmio_write,
        m.hlt,
        m.interrupts_injected,
        m.kicked_injections,
        m.host_exits,
        m.kicks_sent,
        m.boot_kicks,
        m.compat,
        syscall_probe.map_or_else(|| "(see the role's log)".to_string(), |p| format!("{p:?}")),
        m.points
    );
    match &report.log {
        Some(log) => report_log(log, report.stop.exit_code()),
        None => report.stop.exit_code(),
    }
}

/// Print what a recording or replay measured; the exit status of a replay says whether
/// it matched (0 or the guest's own status), failed to read its log (3) or ended in a
/// different state (4).
pub(crate) fn report_log(log: &ftvm::vcpu::LogReport, guest_code: i32) -> i32 {
    let secs = log.guest_ns as f64 / 1e9;
    let role = if log.recording { "record" } else { "replay" };
    eprintln!(
        "ftvm {role}: log {} over {:.3} s of guest time ({:.0} bytes/s)",
        log.stats,
        secs,
        log.stats.bytes_per_second(secs)
    );
    if let Some(r) = &log.replay {
        eprintln!(
            "ftvm replay: {} exits verified, {} deltas applied ({} pages), {} divergences, {} exits skipped while recovering, {} received frames verified",
            r.exits_verified, r.deltas_applied, r.delta_pages_applied, r.divergences, r.exits_skipped, r.frames_verified
        );
    }
    if let Some(p) = &log.problem {
        eprintln!("ftvm {role}: {p}");
        return 3;
    }
    match (&log.digest, &log.recorded_digest) {
        (Some(d), None) => {
            eprintln!("ftvm record: final digest {d}");
            guest_code
        }
        (Some(ours), Some(theirs)) if ours == theirs => {
            eprintln!("ftvm replay: final digest {ours} matches the recording");
            guest_code
        }
        (Some(ours), Some(theirs)) => {
            eprintln!("ftvm replay: final state differs: recorded {theirs}, replayed {ours}");
            4
        }
        _ => {
            eprintln!("ftvm {role}: no final digest");
            3
        }
    }
}
