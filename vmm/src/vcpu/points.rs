//! Events placed by breakpoint instead of shipped as deltas (issue 14's design).
//!
//! Without a PMU the recorder cannot count instructions, so an event it delivers at a kick
//! (the guest ran too long without an exit) cannot be placed by a count. Where the vCPU
//! was in guest kernel mode and this host's breakpoints are exact there (probed at start,
//! `compat::breakpoints`), the recorder logs the point instead of a checkpoint delta: the
//! last exit's ordinal, RIP and the registers (`ft_log::EventPoint`). The replayer runs
//! with a breakpoint on that RIP, compares the registers at each hit
//! (`replay_core::points`), steps over the passes that differ and delivers the event at
//! the one that matches. A kick in user mode (where breakpoints never fire here) is
//! shipped as a delta as before; the choice is per kick and counted.

use ft_log::EventPoint;

use super::logged::LogMode;
use super::record_core::{self, Kick, KickChoice, Point};
use super::replay_core::points::{self, PointHit, Registers};
use super::Vcpu;
use crate::compat::breakpoints::Slot;
use crate::stop::StopReason;

/// Breakpoint hits a replay may step over looking for one point before it counts as a
/// divergence: a point lies at most a few event bounds of guest execution (a few tens of
/// thousands of instructions here) after the exit or point before it.
pub const DEFAULT_SEARCH_BUDGET: u64 = 100_000;

/// How this process places events at kicks (set by the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementRequest {
    /// Name kicks in kernel mode as points (when the host's breakpoints are exact);
    /// false: ship every kick as a delta, as before.
    pub by_breakpoint: bool,
    /// See [`DEFAULT_SEARCH_BUDGET`].
    pub search_budget: u64,
    /// Guest time after which a kick is a delta even where it could be a point (0:
    /// never): a replay that diverges recovers from the next delta, so this bounds what
    /// it skips.
    pub delta_interval_ns: u64,
}

/// See [`PlacementRequest::delta_interval_ns`].
pub const DEFAULT_DELTA_INTERVAL_MS: u64 = 1000;

impl Default for PlacementRequest {
    fn default() -> Self {
        Self {
            by_breakpoint: false,
            search_budget: DEFAULT_SEARCH_BUDGET,
            delta_interval_ns: DEFAULT_DELTA_INTERVAL_MS * 1_000_000,
        }
    }
}

static REQUESTED: std::sync::OnceLock<PlacementRequest> = std::sync::OnceLock::new();

/// Set this process's placement (one VMM process runs one guest), before the VM starts.
pub fn request(r: PlacementRequest) {
    let _ = REQUESTED.set(r);
}

/// How kicks were shipped and points found, over a run.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PointCounts {
    /// Recording: kicks logged as points.
    pub placed: u64,
    /// Recording: kicks shipped as deltas because the guest was in user mode.
    pub delta_user_mode: u64,
    /// Recording: kicks shipped as deltas because the last delta was older than the
    /// delta interval.
    pub delta_periodic: u64,
    /// Recording: kicks shipped as deltas for another reason (no exact breakpoints on
    /// this host, placement turned off, on the SYSCALL repair's breakpoint).
    pub delta_other: u64,
    /// Replay: points reached.
    pub reached: u64,
    /// Replay: breakpoint hits stepped over (other passes through a point's RIP).
    pub hits_stepped: u64,
    /// Replay: points not found (an exit came first, or the budget was spent).
    pub missed: u64,
}

impl std::fmt::Display for PointCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "placed {}, as deltas {} in user mode, {} periodic and {} other; reached {}, hits stepped over {}, missed {}",
            self.placed,
            self.delta_user_mode,
            self.delta_periodic,
            self.delta_other,
            self.reached,
            self.hits_stepped,
            self.missed
        )
    }
}

/// The vCPU's placement state.
#[derive(Debug)]
pub(crate) struct Placement {
    /// Kicks in kernel mode become points (requested, and the host's breakpoints exact).
    by_breakpoint: bool,
    search_budget: u64,
    delta_interval_ns: u64,
    /// Recording: guest time of the last checkpoint delta logged.
    pub(super) last_delta_ns: u64,
    /// The point being searched for, and the hits stepped over so far.
    search: Option<(EventPoint, u64)>,
    /// The registers at the last hit stepped over (for the report of a point missed).
    last_hit: Option<Registers>,
}

impl Placement {
    pub(crate) fn new(exact_breakpoints: bool) -> Self {
        let r = REQUESTED.get().copied().unwrap_or_default();
        Self {
            by_breakpoint: r.by_breakpoint && exact_breakpoints,
            search_budget: r.search_budget.max(1),
            delta_interval_ns: r.delta_interval_ns,
            last_delta_ns: 0,
            last_hit: None,
            search: None,
        }
    }
}

fn registers(r: &kvm_bindings::kvm_regs) -> Registers {
    Registers {
        rip: r.rip,
        rflags: r.rflags,
        gprs: [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ],
    }
}

impl Vcpu {
    /// Recording, kicked vCPU about to get an event: name the point, or log a checkpoint
    /// delta where a breakpoint could not find it.
    pub(super) fn record_kick(&mut self) {
        if !matches!(self.log, LogMode::Record(_)) {
            return;
        }
        let time_ns = self.clock.freeze_now();
        let regs = self.fd.get_regs().ok();
        let cpl = self.fd.get_sregs().map(|s| s.cs.dpl).unwrap_or(3);
        let kick = Kick {
            by_breakpoint: self.placement.by_breakpoint,
            cpl,
            watched_rip: self.breakpoints.get(Slot::PageFault),
            since_delta_ns: time_ns.saturating_sub(self.placement.last_delta_ns),
            delta_interval_ns: self.placement.delta_interval_ns,
            point: regs.map(|r| {
                let at = registers(&r);
                EventPoint {
                    ordinal: self.ordinal,
                    time_ns,
                    rip: at.rip,
                    rflags: at.rflags,
                    gprs: at.gprs,
                    branches: None,
                }
            }),
        };
        let counts = &mut self.metrics.points;
        let choice = record_core::kick_choice(&kick);
        match choice {
            KickChoice::Point => counts.placed += 1,
            KickChoice::DeltaUserMode => counts.delta_user_mode += 1,
            KickChoice::DeltaPeriodic => counts.delta_periodic += 1,
            KickChoice::DeltaOther => counts.delta_other += 1,
        }
        self.record(|_| Point::Kicked(kick));
        if choice == KickChoice::Point {
            crate::pagecheck::at_delta(&self.memory, self.ordinal);
        }
    }

    /// Replay: `point` is due before the next exit: put the breakpoint on its RIP (once)
    /// and let the vCPU run into it.
    pub(super) fn seek_point(&mut self, point: EventPoint) -> Option<StopReason> {
        if self
            .placement
            .search
            .as_ref()
            .is_some_and(|(p, _)| *p == point)
        {
            return None;
        }
        if let Err(e) = self
            .breakpoints
            .set(&self.fd, Slot::EventPoint, Some(point.rip))
        {
            return Some(StopReason::Kvm(e.to_string()));
        }
        self.placement.search = Some((point, 0));
        self.placement.last_hit = None;
        None
    }

    /// Replay: stop searching (the point was reached, or the replay diverged).
    pub(super) fn end_point_search(&mut self) {
        if self.placement.search.take().is_none() {
            return;
        }
        if let Err(e) = self.breakpoints.set(&self.fd, Slot::EventPoint, None) {
            tracing::error!("cannot remove the event point's breakpoint: {e}");
        }
    }

    /// Replay diverged: a search under way has missed its point.
    pub(super) fn point_missed(&mut self) {
        if let Some((point, hits)) = &self.placement.search {
            let last = match &self.placement.last_hit {
                Some(r) => points::differences(point, r),
                None => "never hit".into(),
            };
            tracing::warn!(
                ordinal = point.ordinal,
                "searching for the {}: {hits} hits stepped over; {last}",
                points::describe(point)
            );
            self.metrics.points.missed += 1;
            self.end_point_search();
        }
    }

    /// A debug exit: the SYSCALL repair's or the point search's (host artefacts either
    /// way, never ordinals).
    pub(super) fn on_debug_exit(&mut self, pc: u64) -> Option<StopReason> {
        let stepping = self.breakpoints.stepping();
        let owner = stepping.or_else(|| self.breakpoints.owner_at(pc))?;
        let result = match owner {
            Slot::PageFault => {
                let repair = self.syscall_repair.as_mut()?;
                repair
                    .on_debug_exit(&self.fd, &self.memory, pc, &mut self.breakpoints)
                    .map(|done| self.metrics.compat.syscall += u64::from(done))
            }
            Slot::EventPoint if stepping.is_some() => self.breakpoints.end_step(&self.fd),
            Slot::EventPoint => return self.at_point_hit(),
        };
        result.err().map(|e| StopReason::Kvm(e.to_string()))
    }

    /// The point's breakpoint was hit: deliver there, step over, or diverge.
    fn at_point_hit(&mut self) -> Option<StopReason> {
        let (point, hits) = self.placement.search.as_ref()?;
        let regs = match self.fd.get_regs() {
            Ok(r) => r,
            Err(e) => return Some(StopReason::Kvm(format!("cannot read registers: {e}"))),
        };
        let at = registers(&regs);
        match points::at_hit(point, &at, *hits, self.placement.search_budget) {
            PointHit::Reached => {
                tracing::debug!(
                    ordinal = point.ordinal,
                    rip = format_args!("{:#x}", point.rip),
                    hits_stepped = hits,
                    "event point reached"
                );
                self.end_point_search();
                self.metrics.points.reached += 1;
                if let LogMode::Replay(r) = &mut self.log {
                    if let Some(t) = points::take_point(r.as_mut()) {
                        self.clock.freeze(t);
                        self.clock.advance_to(t);
                    }
                }
                crate::pagecheck::at_delta(&self.memory, self.ordinal);
                self.if_flag = regs.rflags & 0x200 != 0;
                self.deliver();
                None
            }
            PointHit::StepOver => {
                if let Some((_, hits)) = self.placement.search.as_mut() {
                    *hits += 1;
                }
                self.placement.last_hit = Some(at);
                self.metrics.points.hits_stepped += 1;
                let stepped = self.breakpoints.step(&self.fd, Slot::EventPoint);
                stepped.err().map(|e| StopReason::Kvm(e.to_string()))
            }
            PointHit::OverBudget(d) => {
                self.diverged(d);
                None
            }
        }
    }
}
