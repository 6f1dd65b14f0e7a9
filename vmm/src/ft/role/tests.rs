//! The role core's failovers, one scenario each, without sockets, files or KVM (the
//! guest's end, stopping, status and nonsense events: `tests_end.rs`).

use super::*;

pub(super) const CONFIG: RoleConfig = RoleConfig {
    drain_limit_ns: 1_000,
    status_every_ns: 200,
};

pub(super) fn protected_primary(epoch: u64) -> RoleCore {
    let mut p = RoleCore::primary(epoch, CONFIG);
    assert_eq!(p.step(Event::BackupJoined).unwrap(), vec![]);
    assert_eq!(p.role(), &PairRole::PrimaryProtected);
    p
}

pub(super) fn lost(why: &str, now_ns: u64) -> Event {
    Event::PeerLost {
        why: why.into(),
        now_ns,
    }
}

pub(super) fn status(label: &'static str, replica: bool) -> Action {
    Action::WriteStatus(StatusView { label, replica })
}

pub(super) fn went_live(ordinal: u64, now_ns: u64) -> Event {
    Event::WentLive {
        ordinal,
        exits_verified: ordinal,
        divergences: 0,
        now_ns,
    }
}

pub(super) fn guest_stopped(held_bytes: u64, now_ns: u64) -> Event {
    Event::GuestStopped { held_bytes, now_ns }
}

#[test]
fn primary_that_loses_its_backup_and_wins_goes_on_alone() {
    let mut p = protected_primary(3);
    let a = p.step(lost("silent", 100)).unwrap();
    assert_eq!(
        a,
        vec![
            Action::ShutLink,
            Action::AbortPipe,
            Action::Claim { epoch: 4 }
        ]
    );
    assert!(matches!(p.role(), PairRole::Claiming { epoch: 4, .. }));
    let a = p
        .step(Event::ClaimWon {
            epoch: 4,
            now_ns: 350,
        })
        .unwrap();
    assert_eq!(
        a,
        vec![
            Action::StopLogging,
            Action::SetAlone,
            Action::Announce(Notice::WentOnAlone {
                epoch: 4,
                why: "silent".into(),
                took_ns: 250
            })
        ]
    );
    assert_eq!((p.role(), p.epoch()), (&PairRole::PrimaryAlone, 4));
    assert!(p.accepts_backup());
}

#[test]
fn primary_that_loses_the_claim_discards_and_halts() {
    let mut p = protected_primary(1);
    p.step(lost("closed", 0)).unwrap();
    let a = p
        .step(Event::ClaimLost {
            epoch: 2,
            holder: "backup pid 9".into(),
        })
        .unwrap();
    let reason = HaltReason::LostClaim {
        why: "closed".into(),
        epoch: 2,
        holder: "backup pid 9".into(),
    };
    assert!(reason
        .to_string()
        .contains("lost the test-and-set for epoch 2 to backup pid 9"));
    // The primary aborted its log when the peer went; no SetAlone: nothing is released.
    assert_eq!(
        a,
        vec![
            Action::DiscardHeld,
            Action::Halt(reason),
            status("halted", false)
        ]
    );
    assert_eq!(p.epoch(), 1, "a lost epoch is not this VMM's");
    assert!(p.is_finished());
}

#[test]
fn primary_that_cannot_reach_the_directory_halts() {
    let mut p = protected_primary(1);
    p.step(lost("closed", 0)).unwrap();
    let a = p
        .step(Event::ClaimUnanswered {
            epoch: 2,
            why: "timed out".into(),
        })
        .unwrap();
    assert!(!a.contains(&Action::SetAlone));
    assert!(a.contains(&Action::DiscardHeld));
    assert!(matches!(
        p.role(),
        PairRole::Halted {
            side: Side::Primary
        }
    ));
}

#[test]
fn backup_that_wins_replays_what_it_has_then_goes_live() {
    let mut b = RoleCore::backup(2, CONFIG);
    assert_eq!(
        b.step(Event::Verified {
            ordinal: 40,
            held_bytes: 3,
            now_ns: 0
        })
        .unwrap(),
        vec![Action::Release { through: 40 }]
    );
    // The backup keeps its pipe: what it received is still to be replayed.
    assert_eq!(
        b.step(lost("silent", 1_000)).unwrap(),
        vec![Action::ShutLink, Action::Claim { epoch: 3 }]
    );
    assert_eq!(
        b.step(Event::ClaimWon {
            epoch: 3,
            now_ns: 1_100
        })
        .unwrap(),
        vec![Action::GoLive {
            epoch: 3,
            why: "silent".into()
        }]
    );
    assert_eq!(b.role(), &PairRole::GoingLive { since_ns: 1_000 });
    // Replay goes on releasing what it verifies until it is live.
    assert_eq!(
        b.step(Event::Verified {
            ordinal: 45,
            held_bytes: 0,
            now_ns: 1_200
        })
        .unwrap(),
        vec![Action::Release { through: 45 }]
    );
    let a = b.step(went_live(46, 1_500)).unwrap();
    assert_eq!(a[..2], [Action::SetAlone, Action::ServeStdout]);
    let Action::Announce(n) = &a[2] else {
        panic!("{a:?}")
    };
    assert!(n.to_string().contains("live at exit 46 0 ms"), "{n}");
    assert_eq!((b.role(), b.epoch()), (&PairRole::PrimaryAlone, 3));
}

#[test]
fn backup_that_loses_halts_discards_and_never_outputs_again() {
    let mut b = RoleCore::backup(2, CONFIG);
    b.step(lost("closed", 0)).unwrap();
    let a = b
        .step(Event::ClaimLost {
            epoch: 3,
            holder: "primary".into(),
        })
        .unwrap();
    assert_eq!(a[..2], [Action::AbortPipe, Action::DiscardHeld]);
    assert!(matches!(
        a[2],
        Action::Halt(HaltReason::LostClaim { epoch: 3, .. })
    ));
    assert_eq!(a[3], status("halted", true));
    // Nothing after the halt makes it release, go live or claim.
    for e in [
        went_live(9, 5),
        Event::Verified {
            ordinal: 9,
            held_bytes: 0,
            now_ns: 5,
        },
        lost("again", 6),
        Event::ClaimWon {
            epoch: 3,
            now_ns: 7,
        },
        Event::BackupJoined,
    ] {
        assert!(b.step(e).is_err());
    }
    assert_eq!(b.step(Event::Tick { now_ns: 10_000 }).unwrap(), vec![]);
    assert_eq!(b.step(Event::StopRequested).unwrap(), vec![]);
    assert!(matches!(b.role(), PairRole::Halted { side: Side::Backup }));
}

#[test]
fn a_second_backup_joins_after_a_failover() {
    let mut b = RoleCore::backup(1, CONFIG);
    b.step(lost("silent", 0)).unwrap();
    b.step(Event::ClaimWon {
        epoch: 2,
        now_ns: 1,
    })
    .unwrap();
    b.step(went_live(9, 2)).unwrap();
    assert!(b.accepts_backup());
    assert_eq!(b.step(Event::BackupJoined).unwrap(), vec![]);
    assert!(b.awaits_acks() && !b.is_replaying());
    b.step(Event::AckReceived {
        ordinal: 12,
        held_bytes: 0,
        now_ns: 3,
    })
    .unwrap();
    // That backup is lost in turn: the next epoch after the one won at the failover.
    assert_eq!(
        b.step(lost("closed", 4)).unwrap(),
        vec![
            Action::ShutLink,
            Action::AbortPipe,
            Action::Claim { epoch: 3 }
        ]
    );
}

#[test]
fn a_join_that_fails_leaves_the_primary_alone_and_unlogged() {
    let mut p = RoleCore::primary(1, CONFIG);
    let a = p
        .step(Event::BackupFailedToJoin {
            from: "10.0.0.2:4000".into(),
            why: "handshake".into(),
        })
        .unwrap();
    let Action::Announce(n) = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(
        n.to_string(),
        "a backup from 10.0.0.2:4000 could not join: handshake; running unprotected"
    );
    assert_eq!(
        a[1..],
        [Action::AbortPipe, Action::SetAlone, Action::StopLogging]
    );
    assert_eq!(p.role(), &PairRole::PrimaryAlone);
}

#[test]
fn the_last_epoch_cannot_be_followed() {
    let mut p = protected_primary(u64::MAX);
    let a = p.step(lost("silent", 0)).unwrap();
    assert!(
        !a.iter().any(|a| matches!(a, Action::Claim { .. })),
        "{a:?}"
    );
    assert!(a.contains(&Action::DiscardHeld));
    assert!(matches!(
        a.iter().find(|a| matches!(a, Action::Halt(_))),
        Some(Action::Halt(HaltReason::NoEpochLeft { .. }))
    ));
    assert!(p.is_finished());
    assert_eq!(p.epoch(), u64::MAX);
    let mut b = RoleCore::backup(u64::MAX - 1, CONFIG);
    b.step(lost("silent", 0)).unwrap();
    b.step(Event::ClaimWon {
        epoch: u64::MAX,
        now_ns: 1,
    })
    .unwrap();
    assert_eq!(b.epoch(), u64::MAX);
}
