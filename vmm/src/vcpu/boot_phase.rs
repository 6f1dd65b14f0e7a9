//! The event bound while a freshly loaded kernel boots.
//!
//! On hosts whose KVM emulates guest kernel mode (shared/HOST-KVM.md) a kernel's boot is
//! CPU-bound in the emulator, and each timer tick delivered at a kick runs its handler there
//! too (about 2.7 ms of the stock kernel's boot per tick here, a fifth of the whole boot at
//! the live bound of 5 ms). Until the guest is first seen in user mode nobody waits on its
//! interrupt latency, so the bound is longer: ticks reach it at its own synchronous exits,
//! and a kick only breaks a stretch without any. A halted guest is not affected (halts
//! always wake at the next timer deadline). The phase ends for good at the first kick that
//! finds the vCPU at CPL3 (`/init` and what it runs); a restored, replaying or transferred
//! VM never has it. Kicks are host-timed and logged where they land, so the longer bound
//! changes where events are placed, never what a replay of the log does.

/// The default bound while booting: long enough that the stock kernel's boot takes its
/// ticks mostly at synchronous exits, short enough that a kernel waiting on jiffies in a
/// loop without exits still sees time move.
pub const DEFAULT_BOOT_EVENT_BOUND_NS: u64 = 100_000_000;

/// A boot in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPhase {
    bound_ns: u64,
}

impl BootPhase {
    /// A boot phase with `bound_ns` as its event bound.
    pub fn new(bound_ns: u64) -> Self {
        Self { bound_ns }
    }

    /// The event bound while booting, given the live one (never shorter than it).
    pub fn bound(&self, live_bound_ns: u64) -> u64 {
        self.bound_ns.max(live_bound_ns)
    }

    /// Whether a kick that found the vCPU at privilege level `cpl` ends the phase (the
    /// guest runs user code).
    pub fn ends_at_kick(&self, cpl: u8) -> bool {
        cpl != 0
    }
}

impl super::Vcpu {
    /// The event bound now: the live one, or the boot phase's while it lasts.
    pub(super) fn event_bound(&self, live_bound_ns: u64) -> u64 {
        self.boot_phase
            .as_ref()
            .map_or(live_bound_ns, |phase| phase.bound(live_bound_ns))
    }

    /// A kick during the boot phase: one found in user mode ends it.
    pub(super) fn boot_phase_at_kick(&mut self) {
        let Some(phase) = self.boot_phase else {
            return;
        };
        self.metrics.boot_kicks += 1;
        // Unknown privilege (the ioctl failed): keep booting, the next kick asks again.
        let cpl = self.fd.get_sregs().map_or(0, |s| s.cs.dpl);
        if phase.ends_at_kick(cpl) {
            tracing::info!(
                kicks = self.metrics.boot_kicks,
                guest_s = self.clock.live_ns().saturating_sub(self.start_ns) as f64 / 1e9,
                "the guest runs in user mode: boot phase over, live event bound from now on"
            );
            self.boot_phase = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_bound_is_never_shorter_than_the_live_one() {
        let phase = BootPhase::new(100_000_000);
        assert_eq!(phase.bound(5_000_000), 100_000_000);
        assert_eq!(BootPhase::new(1_000_000).bound(5_000_000), 5_000_000);
    }

    #[test]
    fn kernel_mode_kicks_keep_booting_and_a_user_mode_kick_ends_it() {
        let phase = BootPhase::new(100_000_000);
        assert!(!phase.ends_at_kick(0));
        assert!(phase.ends_at_kick(3));
    }

    #[test]
    fn any_privilege_level_above_zero_counts_as_user_mode() {
        assert!(BootPhase::new(1).ends_at_kick(1));
    }
}
