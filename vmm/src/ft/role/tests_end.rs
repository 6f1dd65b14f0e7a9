//! The role core at the guest's end, on a stop, for status, and given events that make no
//! sense.

use super::tests::{guest_stopped, lost, protected_primary, status, went_live, CONFIG};
use super::*;

#[test]
fn protected_primary_whose_guest_ends_waits_for_the_acks() {
    let mut p = protected_primary(1);
    let a = p.step(guest_stopped(10, 0)).unwrap();
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
    p.step(guest_stopped(10, 50)).unwrap();
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
    let a = p.step(guest_stopped(0, 0)).unwrap();
    assert_eq!(
        a[..2],
        [Action::ClosePipe, Action::WaitSent { limit_ns: 1_000 }]
    );
    let mut alone = RoleCore::primary(1, CONFIG);
    let a = alone.step(guest_stopped(5, 0)).unwrap();
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
    p.step(guest_stopped(10, 0)).unwrap();
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
    p.step(guest_stopped(10, 0)).unwrap();
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
    assert!(alone.step(went_live(1, 0)).is_err());
    assert_eq!(alone.role(), &PairRole::PrimaryAlone);
    assert_eq!(alone.epoch(), 1);
    // A backup that has not won never goes live, and a claim answer for another epoch
    // does not count.
    let mut b = RoleCore::backup(5, CONFIG);
    assert!(b.step(went_live(1, 0)).is_err());
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
