//! The replay core at a recorded event point (see [`ft_log::EventPoint`]): the vCPU runs
//! with a breakpoint on the point's RIP, and at each hit this decides whether this pass is
//! the recorded one (every general register and RFLAGS equal), another pass to step over,
//! or one pass too many (the search budget spent: a divergence).

use ft_log::{Entry, EventPoint};

use super::{Divergence, LogAhead};

/// Register names in [`EventPoint::gprs`] order.
const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// The registers at a breakpoint hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registers {
    pub rip: u64,
    pub rflags: u64,
    pub gprs: [u64; 16],
}

/// What to do at a hit of the point's breakpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum PointHit {
    /// The recorded pass: deliver the point's event here.
    Reached,
    /// Another pass through the same instruction: step over it and search on.
    StepOver,
    /// This was hit `budget` times without matching: a divergence.
    OverBudget(Divergence),
}

/// The point was reached: take it off the log; its guest time.
pub(crate) fn take_point(log: &mut impl LogAhead) -> Option<u64> {
    match log.pop() {
        Ok(Some(Entry::Point(p))) => Some(p.time_ns),
        _ => None,
    }
}

/// A hit of `point`'s breakpoint with registers `regs`, after `hits` earlier hits that
/// did not match, under a budget of `budget` hits.
pub fn at_hit(point: &EventPoint, regs: &Registers, hits: u64, budget: u64) -> PointHit {
    if regs.rip == point.rip && regs.rflags == point.rflags && regs.gprs == point.gprs {
        return PointHit::Reached;
    }
    if hits.saturating_add(1) < budget {
        return PointHit::StepOver;
    }
    PointHit::OverBudget(Divergence::new(
        point.ordinal,
        "event point not found within the search budget",
        format!("{} (after {budget} hits)", describe(point)),
        differences(point, regs),
    ))
}

/// The guest made exit `ordinal` (described by `exit`) before reaching `point`.
pub fn passed(point: &EventPoint, ordinal: u64, exit: String) -> Divergence {
    Divergence::new(
        ordinal,
        "exit before the recorded event point",
        describe(point),
        exit,
    )
}

/// A point in words.
pub fn describe(p: &EventPoint) -> String {
    format!(
        "point after exit {} at rip {:#x} rcx {:#x} rflags {:#x}",
        p.ordinal, p.rip, p.gprs[2], p.rflags
    )
}

/// The registers that differ from the point's, in words.
pub fn differences(p: &EventPoint, regs: &Registers) -> String {
    let mut out = Vec::new();
    if regs.rip != p.rip {
        out.push(format!("rip {:#x} (recorded {:#x})", regs.rip, p.rip));
    }
    if regs.rflags != p.rflags {
        out.push(format!(
            "rflags {:#x} (recorded {:#x})",
            regs.rflags, p.rflags
        ));
    }
    for (i, name) in GPR_NAMES.iter().enumerate() {
        if regs.gprs[i] != p.gprs[i] {
            out.push(format!(
                "{name} {:#x} (recorded {:#x})",
                regs.gprs[i], p.gprs[i]
            ));
        }
    }
    if out.is_empty() {
        "the same registers".into()
    } else {
        format!("last hit: {}", out.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point() -> EventPoint {
        EventPoint {
            ordinal: 40,
            time_ns: 9_000_000,
            rip: 0xffff_ffff_8100_2000,
            rflags: 0x246,
            gprs: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
            branches: None,
        }
    }

    fn regs(rcx: u64) -> Registers {
        let mut gprs = point().gprs;
        gprs[2] = rcx;
        Registers {
            rip: point().rip,
            rflags: 0x246,
            gprs,
        }
    }

    #[test]
    fn the_pass_with_the_recorded_registers_is_the_point() {
        assert_eq!(at_hit(&point(), &regs(3), 7, 100), PointHit::Reached);
    }

    #[test]
    fn other_passes_are_stepped_over_until_the_budget_is_spent() {
        assert_eq!(at_hit(&point(), &regs(9), 0, 100), PointHit::StepOver);
        assert_eq!(at_hit(&point(), &regs(9), 98, 100), PointHit::StepOver);
        let PointHit::OverBudget(d) = at_hit(&point(), &regs(9), 99, 100) else {
            panic!("the hundredth hit spends the budget");
        };
        assert_eq!(d.ordinal, 40);
        assert!(
            d.replayed.contains("rcx 0x9 (recorded 0x3)"),
            "{}",
            d.replayed
        );
        assert!(d.recorded.contains("after 100 hits"), "{}", d.recorded);
    }

    #[test]
    fn rflags_alone_tells_passes_apart() {
        let mut r = regs(3);
        r.rflags = 0x202;
        assert_eq!(at_hit(&point(), &r, 0, 100), PointHit::StepOver);
        assert_eq!(
            differences(&point(), &r),
            "last hit: rflags 0x202 (recorded 0x246)"
        );
    }

    #[test]
    fn a_point_is_due_only_at_its_ordinal_and_taken_when_reached() {
        use super::super::{before_run, BeforeRun};
        let mut log = super::super::tests::Script::file([
            Entry::Point(Box::new(point())),
            Entry::Interrupt {
                ordinal: 40,
                vector: 0x20,
            },
        ]);
        assert_eq!(before_run(&mut log, 39).unwrap(), BeforeRun::Run);
        let due = BeforeRun::SeekPoint(Box::new(point()));
        assert_eq!(before_run(&mut log, 40).unwrap(), due);
        // Still due until reached: the vCPU keeps its breakpoint.
        assert_eq!(before_run(&mut log, 40).unwrap(), due);
        assert_eq!(take_point(&mut log), Some(9_000_000));
        assert_eq!(before_run(&mut log, 40).unwrap(), BeforeRun::Run);
    }

    #[test]
    fn the_exit_check_reports_an_exit_made_before_the_point() {
        use super::super::{check_exit, ExitCheck};
        let mut log = super::super::tests::Script::file([Entry::Point(Box::new(point()))]);
        let mine = ft_log::ExitRecord {
            ordinal: 41,
            time_ns: 0,
            kind: ft_log::ExitKind::PioOut,
            rip: 0x10,
            addr: 0x3f8,
            size: 1,
            value: 0x41,
        };
        let Ok(ExitCheck::Unexpected(d)) = check_exit(&mut log, &mine) else {
            panic!("an exit where the log has a point is a divergence");
        };
        assert_eq!(d.what, "exit before the recorded event point");
        assert!(d.replayed.contains("PioOut rip 0x10"), "{}", d.replayed);
    }

    #[test]
    fn an_exit_before_the_point_is_a_divergence_naming_both() {
        let d = passed(&point(), 41, "PioOut rip 0x10".into());
        assert_eq!(d.ordinal, 41);
        assert!(d
            .recorded
            .contains("point after exit 40 at rip 0xffffffff81002000"));
    }
}
