//! The role core's transitions, one scenario each, without sockets, files or KVM.

use super::*;

const CONFIG: RoleConfig = RoleConfig {
    drain_limit_ns: 1_000,
    status_every_ns: 200,
};

fn protected_primary(epoch: u64) -> RoleCore {
    let mut p = RoleCore::primary(epoch, CONFIG);
    assert_eq!(p.step(Event::BackupJoined).unwrap(), vec![]);
    assert_eq!(p.role(), &PairRole::PrimaryProtected);
    p
}

fn lost(why: &str, now_ns: u64) -> Event {
    Event::PeerLost {
        why: why.into(),
        now_ns,
    }
}

fn status(label: &'static str, replica: bool) -> Action {
    Action::WriteStatus(StatusView { label, replica })
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
    let a = b
        .step(Event::WentLive {
            ordinal: 46,
            exits_verified: 46,
            divergences: 0,
            now_ns: 1_500,
        })
        .unwrap();
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
        Event::WentLive {
            ordinal: 9,
            exits_verified: 9,
            divergences: 0,
            now_ns: 5,
        },
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
fn protected_primary_whose_guest_ends_waits_for_the_acks() {
    let mut p = protected_primary(1);
    let a = p
        .step(Event::GuestStopped {
            held_bytes: 10,
            now_ns: 0,
        })
        .unwrap();
    assert_eq!(a, vec![Action::ClosePipe]);
    assert_eq!(
        p.role(),
        &PairRole::Draining {
            side: Side::Primary,
            deadline_ns: 1_000
        }
    );
    let ack = |ordinal, held_bytes, now_ns| Event::AckReceived {
        ordinal,
        held_bytes,
        now_ns,
    };
    assert_eq!(p.step(ack(5, 4, 100)).unwrap(), vec![]);
    assert_eq!(p.step(Event::Tick { now_ns: 999 }).unwrap(), vec![]);
    assert_eq!(
        p.step(ack(7, 0, 400)).unwrap(),
        vec![
            Action::WaitSent { limit_ns: 600 },
            Action::ShutLink,
            Action::ClosePipe,
            Action::FinishGuest,
            status("stopped", false)
        ]
    );
    assert_eq!(p.acked(), 7);
}

#[test]
fn draining_is_bounded_by_its_deadline() {
    let mut p = protected_primary(1);
    p.step(Event::GuestStopped {
        held_bytes: 10,
        now_ns: 50,
    })
    .unwrap();
    let a = p.step(Event::Tick { now_ns: 1_050 }).unwrap();
    assert_eq!(a[0], Action::WaitSent { limit_ns: 0 });
    assert!(a.contains(&Action::FinishGuest));
    assert!(
        !a.contains(&Action::SetAlone),
        "unacknowledged output stays held"
    );
    assert!(p.is_finished());
}

#[test]
fn guest_ending_with_nothing_held_finishes_at_once() {
    let mut p = protected_primary(1);
    let a = p
        .step(Event::GuestStopped {
            held_bytes: 0,
            now_ns: 0,
        })
        .unwrap();
    assert_eq!(
        a[..2],
        [Action::ClosePipe, Action::WaitSent { limit_ns: 1_000 }]
    );
    let mut alone = RoleCore::primary(1, CONFIG);
    let a = alone
        .step(Event::GuestStopped {
            held_bytes: 5,
            now_ns: 0,
        })
        .unwrap();
    assert_eq!(
        a,
        vec![
            Action::ClosePipe,
            Action::FinishGuest,
            status("stopped", false)
        ]
    );
}

#[test]
fn backup_lost_while_draining_releases_after_a_won_claim_and_finishes() {
    let mut p = protected_primary(1);
    p.step(Event::GuestStopped {
        held_bytes: 10,
        now_ns: 0,
    })
    .unwrap();
    p.step(lost("closed", 10)).unwrap();
    let a = p
        .step(Event::ClaimWon {
            epoch: 2,
            now_ns: 20,
        })
        .unwrap();
    assert_eq!(a[0], Action::SetAlone);
    assert!(a.contains(&Action::FinishGuest));
    assert!(matches!(p.role(), PairRole::Stopped { .. }));
    // Lost instead: it halts (the winner will print the end).
    let mut p = protected_primary(1);
    p.step(Event::GuestStopped {
        held_bytes: 10,
        now_ns: 0,
    })
    .unwrap();
    p.step(lost("closed", 10)).unwrap();
    let a = p
        .step(Event::ClaimLost {
            epoch: 2,
            holder: "b".into(),
        })
        .unwrap();
    assert!(a.contains(&Action::DiscardHeld) && !a.contains(&Action::SetAlone));
    assert!(matches!(p.role(), PairRole::Halted { .. }));
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
    b.step(Event::WentLive {
        ordinal: 9,
        exits_verified: 9,
        divergences: 0,
        now_ns: 2,
    })
    .unwrap();
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

#[test]
fn events_that_make_no_sense_are_reported_and_change_nothing() {
    let mut alone = RoleCore::primary(1, CONFIG);
    let ack = Event::AckReceived {
        ordinal: 1,
        held_bytes: 0,
        now_ns: 0,
    };
    assert_eq!(
        alone.step(ack).unwrap_err(),
        RoleError::Unexpected {
            event: "ack received",
            role: "primary (alone)"
        }
    );
    assert!(alone.step(lost("?", 0)).is_err());
    assert!(alone
        .step(Event::ClaimWon {
            epoch: 2,
            now_ns: 0
        })
        .is_err());
    assert!(alone
        .step(Event::WentLive {
            ordinal: 1,
            exits_verified: 1,
            divergences: 0,
            now_ns: 0
        })
        .is_err());
    assert_eq!(alone.role(), &PairRole::PrimaryAlone);
    assert_eq!(alone.epoch(), 1);
    // A backup that has not won never goes live, and a claim answer for another epoch
    // does not count.
    let mut b = RoleCore::backup(5, CONFIG);
    assert!(b
        .step(Event::WentLive {
            ordinal: 1,
            exits_verified: 1,
            divergences: 0,
            now_ns: 0
        })
        .is_err());
    assert!(b.step(Event::BackupJoined).is_err());
    b.step(lost("silent", 0)).unwrap();
    assert_eq!(
        b.step(Event::ClaimWon {
            epoch: 9,
            now_ns: 0
        })
        .unwrap_err(),
        RoleError::WrongEpoch { asked: 6, got: 9 }
    );
    assert!(matches!(b.role(), PairRole::Claiming { epoch: 6, .. }));
    assert_eq!(b.epoch(), 5);
}

#[test]
fn stop_requested_ends_each_side_its_own_way() {
    let mut p = protected_primary(1);
    assert_eq!(
        p.step(Event::StopRequested).unwrap(),
        vec![
            Action::ShutLink,
            Action::ClosePipe,
            Action::FinishGuest,
            status("stopped", false)
        ]
    );
    let mut b = RoleCore::backup(1, CONFIG);
    assert_eq!(
        b.step(Event::StopRequested).unwrap(),
        vec![
            Action::ShutLink,
            Action::AbortPipe,
            Action::FinishGuest,
            status("stopped", true)
        ]
    );
}

#[test]
fn status_is_written_at_once_then_at_its_interval() {
    let mut b = RoleCore::backup(1, CONFIG);
    let tick = |b: &mut RoleCore, now_ns| b.step(Event::Tick { now_ns }).unwrap();
    assert_eq!(tick(&mut b, 0), vec![status("backup", true)]);
    assert_eq!(tick(&mut b, 199), vec![]);
    assert_eq!(tick(&mut b, 200), vec![status("backup", true)]);
    let mut p = RoleCore::primary(1, CONFIG);
    assert_eq!(tick(&mut p, 0), vec![status("primary (alone)", false)]);
    p.step(Event::BackupJoined).unwrap();
    assert_eq!(tick(&mut p, 500), vec![status("primary", false)]);
}
