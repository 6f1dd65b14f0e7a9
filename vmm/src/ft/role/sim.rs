//! A simulated pair (tests only): two role cores driven by a scripted controller each, a
//! lossy channel that carries the log one way and acknowledgements the other, a simulated
//! shared directory with its test-and-set (which may not answer), and one fault per run
//! (a VMM killed, the channel cut, a one-way partition), plus events that make no sense
//! thrown in. Deterministic: one xorshift PRNG per seed, simulated time.
//!
//! Checked for every seed: at most one VMM releases output as a primary in any epoch;
//! each exit's output, whoever releases it, is the same (a released byte is never
//! contradicted by the timeline that goes on); a VMM that halted releases nothing more;
//! at most one VMM ends up running the guest.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::tests::{guest_stopped, lost, went_live};
use super::{Action, Event, Notice, PairRole, RoleConfig, RoleCore};

/// xorshift64* (as in `ft_log`'s simulated network).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self((seed ^ 0xD1B5_4A32_D192_ED03).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
}

/// One simulated VMM: its core and what its controller would own.
struct Vmm {
    id: usize,
    core: RoleCore,
    alive: bool,
    link: bool,
    pipe: bool,
    logging: bool,
    /// The guest's timeline: who first ran each exit live (index 0 is exit 1).
    exits: Vec<usize>,
    /// Backup: exits received, and replayed (verified).
    received: u64,
    verified: u64,
    /// Output held by the output rule: exit -> whose timeline produced it.
    held: BTreeMap<u64, usize>,
    /// When this VMM will notice that its peer is gone.
    notice_loss_at: Option<u64>,
    /// Going live: the replay ends here.
    live_at: Option<u64>,
    /// The shared directory does not answer this VMM.
    cut_off: bool,
}

struct World {
    rng: Rng,
    now: u64,
    /// The test-and-set: epoch -> owner.
    owners: BTreeMap<u64, usize>,
    to_backup: VecDeque<(u64, u64, usize)>,
    to_primary: VecDeque<(u64, u64)>,
    /// Who released output as a primary in each epoch.
    primaries: BTreeMap<u64, BTreeSet<usize>>,
    /// Each released exit's output: whose timeline it came from.
    released: BTreeMap<u64, usize>,
    halted: BTreeSet<usize>,
    /// What happened in this run (so the test can tell its seeds cover the cases).
    seen: BTreeSet<&'static str>,
}

const CONFIG: RoleConfig = RoleConfig {
    drain_limit_ns: 300,
    status_every_ns: 50,
};

impl World {
    fn release(&mut self, v: &mut Vmm, through: u64) {
        assert!(!self.halted.contains(&v.id), "a halted VMM released output");
        let primary = !v.core.is_replaying();
        let keep = v.held.split_off(&(through.saturating_add(1)));
        for (exit, from) in std::mem::replace(&mut v.held, keep) {
            let first = *self.released.entry(exit).or_insert(from);
            assert_eq!(first, from, "exit {exit}: released output contradicted");
            if primary {
                let who = self.primaries.entry(v.core.epoch()).or_default();
                who.insert(v.id);
                assert!(
                    who.len() <= 1,
                    "two VMMs output in epoch {}",
                    v.core.epoch()
                );
            }
        }
    }

    /// Step `v` with `event`, carrying out its actions (and the claims' answers).
    fn handle(&mut self, v: &mut Vmm, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(e) = events.pop_front() {
            let Ok(actions) = v.core.step(e) else {
                continue;
            };
            for a in actions {
                match a {
                    Action::ShutLink => v.link = false,
                    Action::AbortPipe | Action::ClosePipe => v.pipe = false,
                    Action::Claim { epoch } if v.cut_off => {
                        events.push_back(Event::ClaimUnanswered {
                            epoch,
                            why: "no answer".into(),
                        })
                    }
                    Action::Claim { epoch } => events.push_back(match self.owners.get(&epoch) {
                        Some(holder) => Event::ClaimLost {
                            epoch,
                            holder: holder.to_string(),
                        },
                        None => {
                            self.owners.insert(epoch, v.id);
                            Event::ClaimWon {
                                epoch,
                                now_ns: self.now,
                            }
                        }
                    }),
                    Action::SetAlone => self.release(v, u64::MAX),
                    Action::DiscardHeld => v.held.clear(),
                    Action::Release { through } => self.release(v, through),
                    Action::StopLogging => v.logging = false,
                    Action::GoLive { .. } => {
                        // The log ends: the replay finishes what was received, then goes live.
                        v.pipe = false;
                        v.live_at = Some(self.now + 1 + self.rng.below(20));
                    }
                    Action::Halt(_) => {
                        self.halted.insert(v.id);
                        self.seen.insert("halted");
                    }
                    Action::Announce(n) => {
                        self.seen.insert(match n {
                            Notice::Live { .. } => "went live",
                            Notice::WentOnAlone { .. } => "went on alone",
                            Notice::JoinFailed { .. } => "join failed",
                        });
                    }
                    Action::WaitSent { .. }
                    | Action::ServeStdout
                    | Action::WriteStatus(_)
                    | Action::FinishGuest => {}
                }
            }
        }
    }
}

/// The channel went: each side that still has it notices, some time later.
fn cut(rng: &mut Rng, now: u64, vs: &mut [Vmm; 2], only: Option<usize>) {
    for v in vs.iter_mut() {
        if only.is_none_or(|i| i == v.id) && v.alive && v.notice_loss_at.is_none() {
            v.notice_loss_at = Some(now + 1 + rng.below(200));
        }
    }
}

fn run(seed: u64) -> BTreeSet<&'static str> {
    let mut rng = Rng::new(seed);
    let epoch = if rng.chance(1, 8) {
        u64::MAX - rng.below(2)
    } else {
        1 + rng.below(5)
    };
    let mut w = World {
        rng: Rng::new(seed ^ 0xabcdef),
        now: 0,
        owners: BTreeMap::from([(epoch, 0)]),
        to_backup: VecDeque::new(),
        to_primary: VecDeque::new(),
        primaries: BTreeMap::new(),
        released: BTreeMap::new(),
        halted: BTreeSet::new(),
        seen: BTreeSet::new(),
    };
    let vmm = |id, core| Vmm {
        id,
        core,
        alive: true,
        link: true,
        pipe: true,
        logging: true,
        exits: Vec::new(),
        received: 0,
        verified: 0,
        held: BTreeMap::new(),
        notice_loss_at: None,
        live_at: None,
        cut_off: false,
    };
    let mut primary = RoleCore::primary(epoch, CONFIG);
    primary.step(Event::BackupJoined).unwrap();
    let mut vs = [vmm(0, primary), vmm(1, RoleCore::backup(epoch, CONFIG))];
    let fault_at = 20 + rng.below(400);
    let fault = rng.below(5);
    let stop_guest_at = rng.chance(1, 4).then(|| 10 + rng.below(500));
    let (lossy, delay) = (rng.chance(1, 3), 1 + rng.below(10));
    for v in vs.iter_mut() {
        v.cut_off = rng.chance(1, 6);
    }
    for now in 0..2_000u64 {
        w.now = now;
        if now == fault_at {
            match fault {
                0 => vs[0].alive = false,
                1 => vs[1].alive = false,
                2 => cut(&mut rng, now, &mut vs, Some(1)),
                3 => cut(&mut rng, now, &mut vs, Some(0)),
                _ => cut(&mut rng, now, &mut vs, None),
            }
            if fault <= 1 {
                cut(&mut rng, now, &mut vs, None);
            }
        }
        // The channel: the log one way, acknowledgements the other, while both ends hold it.
        let carried = now < fault_at || (fault < 2 && vs[0].link && vs[1].link);
        while w.to_backup.front().is_some_and(|m| m.0 <= now) {
            let (_, exit, from) = w.to_backup.pop_front().unwrap();
            let b = vs
                .iter_mut()
                .find(|v| v.alive && v.pipe && v.core.is_replaying());
            if let (true, Some(b)) = (carried, b) {
                if exit == b.received + 1 {
                    b.received = exit;
                    b.exits.push(from);
                }
            }
        }
        while w.to_primary.front().is_some_and(|m| m.0 <= now) {
            let (_, ack) = w.to_primary.pop_front().unwrap();
            if let (true, Some(p)) = (carried, vs.iter_mut().find(|v| v.core.awaits_acks())) {
                w.release(p, ack);
                let held_bytes = p.held.len() as u64;
                w.handle(
                    p,
                    Event::AckReceived {
                        ordinal: ack,
                        held_bytes,
                        now_ns: now,
                    },
                );
            }
        }
        for v in vs.iter_mut() {
            if v.alive && !v.core.is_finished() {
                step_vmm(&mut w, v, &mut rng, now, stop_guest_at, lossy, delay);
            }
        }
        // A side that shut its end (or died) is noticed by the other in time: a frozen
        // primary thawed, a connection reset.
        for i in 0..2 {
            let gone = !vs[1 - i].link || !vs[1 - i].alive;
            if gone && vs[i].link && vs[i].alive && vs[i].notice_loss_at.is_none() {
                vs[i].notice_loss_at = Some(now + 1 + rng.below(200));
            }
        }
    }
    let running = vs
        .iter()
        .filter(|v| v.alive && !v.core.is_finished() && !v.core.is_replaying())
        .count();
    assert!(running <= 1, "seed {seed}: two VMMs run the guest");
    for (e, owner) in &w.owners {
        if let Some(who) = w.primaries.get(e) {
            assert!(
                who.iter().all(|i| i == owner),
                "seed {seed}: epoch {e} not owned by its outputter"
            );
        }
    }
    if vs
        .iter()
        .any(|v| matches!(v.core.role(), PairRole::Stopped { .. }))
    {
        w.seen.insert("guest stopped");
    }
    w.seen
}

#[allow(clippy::too_many_arguments)]
fn step_vmm(
    w: &mut World,
    v: &mut Vmm,
    rng: &mut Rng,
    now: u64,
    stop_guest_at: Option<u64>,
    lossy: bool,
    delay: u64,
) {
    if v.notice_loss_at.is_some_and(|t| t <= now) && v.link {
        w.handle(v, lost("silent", now));
    }
    // The guest runs where a primary is; its output is held unless the VMM is alone.
    let runs = matches!(
        v.core.role(),
        PairRole::PrimaryAlone | PairRole::PrimaryProtected
    );
    if runs && stop_guest_at.is_some_and(|t| t <= now) && v.id == 0 {
        let held_bytes = v.held.len() as u64;
        w.handle(v, guest_stopped(held_bytes, now));
    } else if runs && rng.chance(1, 2) {
        v.exits.push(v.id);
        let exit = v.exits.len() as u64;
        v.held.insert(exit, v.id);
        if v.core.role() == &PairRole::PrimaryAlone {
            w.release(v, exit);
        } else if v.logging && v.pipe && !(lossy && rng.chance(1, 50)) {
            w.to_backup.push_back((now + delay, exit, v.id));
        }
    }
    // The replay: verifies what it received, holding the output it reproduces.
    if v.core.is_replaying() && v.pipe && v.verified < v.received && rng.chance(2, 3) {
        v.verified += 1;
        v.held.insert(v.verified, v.exits[v.verified as usize - 1]);
        let held_bytes = v.held.len() as u64;
        w.handle(
            v,
            Event::Verified {
                ordinal: v.verified,
                held_bytes,
                now_ns: now,
            },
        );
        if v.link && !(lossy && rng.chance(1, 50)) {
            w.to_primary.push_back((now + delay, v.verified));
        }
    }
    if v.live_at.is_some_and(|t| t <= now) {
        // Everything received has been replayed and verified; the rest is this VMM's.
        while v.verified < v.received {
            v.verified += 1;
            v.held.insert(v.verified, v.exits[v.verified as usize - 1]);
        }
        v.exits.truncate(v.verified as usize);
        let ordinal = v.verified;
        w.handle(
            v,
            Event::Verified {
                ordinal,
                held_bytes: 0,
                now_ns: now,
            },
        );
        v.live_at = None;
        w.handle(v, went_live(ordinal, now));
    }
    // Nonsense now and then: every one must be refused without effect.
    if rng.chance(1, 40) {
        let junk = match rng.below(4) {
            0 => Event::AckReceived {
                ordinal: rng.below(1 << 20),
                held_bytes: 0,
                now_ns: now,
            },
            1 => went_live(1, now),
            2 => Event::ClaimWon {
                epoch: rng.next(),
                now_ns: now,
            },
            _ => Event::BackupJoined,
        };
        let before = (v.core.role().clone(), v.core.epoch());
        if v.core.clone().step(junk.clone()).is_err() {
            w.handle(v, junk);
            assert_eq!((v.core.role().clone(), v.core.epoch()), before);
        }
    }
    w.handle(v, Event::Tick { now_ns: now });
}

#[test]
fn at_most_one_vmm_outputs_per_epoch_whatever_fails_and_when() {
    let mut seen = BTreeSet::new();
    for seed in 0..400 {
        seen.extend(run(seed));
    }
    for case in ["went live", "went on alone", "halted", "guest stopped"] {
        assert!(seen.contains(case), "no seed where a VMM {case}: {seen:?}");
    }
}
