//! The lecture's rules and corner cases, and what a ping may not do.

use super::*;

const DEAD: u64 = 3;

fn view(num: u64, p: Option<&str>, b: Option<&str>) -> View {
    View {
        num,
        primary: p.map(String::from),
        backup: b.map(String::from),
    }
}

/// Lets `ticks` intervals pass during which each of `pingers` pings with its view num.
fn run(vs: &mut ViewCore, ticks: u64, pingers: &[(&str, u64)]) {
    for _ in 0..ticks {
        for (s, n) in pingers {
            vs.ping(s, *n);
        }
        vs.tick();
    }
}

/// A view service with A primary and B backup, acknowledged.
fn ab() -> ViewCore {
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    vs.ping("A", 1);
    vs.ping("B", 0);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
    vs.ping("A", 2);
    assert!(vs.acked());
    vs
}

#[test]
fn first_primary() {
    let mut vs = ViewCore::new(DEAD);
    assert_eq!(vs.reply().view.num, 0);
    let r = vs.ping("A", 0);
    assert_eq!(r.view, view(1, Some("A"), None));
    assert!(!r.acked);
    // A second server does not become backup before the primary acknowledged view 1.
    let r = vs.ping("B", 0);
    assert_eq!(r.view, view(1, Some("A"), None));
    let r = vs.ping("A", 1);
    assert!(r.view.num >= 1 && r.view.is_primary("A"));
}

#[test]
fn first_backup() {
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    let r = vs.ping("A", 1);
    assert_eq!(
        r,
        ViewReply {
            view: view(1, Some("A"), None),
            acked: true
        }
    );
    let r = vs.ping("B", 0);
    assert_eq!(r.view, view(2, Some("A"), Some("B")));
    assert!(!r.acked);
    // Staying: A and B keep pinging, nothing changes once A acknowledged.
    run(&mut vs, 10, &[("A", 2), ("B", 2)]);
    assert_eq!(
        vs.reply(),
        ViewReply {
            view: view(2, Some("A"), Some("B")),
            acked: true
        }
    );
}

#[test]
fn backup_takes_over_when_primary_dies() {
    let mut vs = ab();
    // A stops pinging; B keeps pinging. A is dead after DEAD ticks, not before.
    run(&mut vs, DEAD - 1, &[("B", 2)]);
    assert_eq!(vs.view().num, 2);
    run(&mut vs, 1, &[("B", 2)]);
    assert_eq!(vs.view(), &view(3, Some("B"), None));
}

#[test]
fn backup_takes_over_with_idle_as_new_backup() {
    let mut vs = ab();
    vs.ping("C", 0);
    run(&mut vs, DEAD, &[("B", 2), ("C", 2)]);
    assert_eq!(vs.view(), &view(3, Some("B"), Some("C")));
}

#[test]
fn idle_server_becomes_backup() {
    let mut vs = ab();
    vs.ping("C", 0);
    // C is idle while A and B are alive.
    run(&mut vs, 5, &[("A", 2), ("B", 2), ("C", 2)]);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
    // The backup dies: C replaces it.
    run(&mut vs, DEAD, &[("A", 2), ("C", 2)]);
    assert_eq!(vs.view(), &view(3, Some("A"), Some("C")));
    // An empty backup slot is filled as well.
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    vs.ping("A", 1);
    run(&mut vs, 5, &[("A", 1)]);
    assert_eq!(vs.view(), &view(1, Some("A"), None));
    vs.ping("C", 0);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("C")));
}

#[test]
fn no_new_view_without_primary_ack() {
    // View 2 (A, B) not yet acknowledged by A.
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    vs.ping("A", 1);
    vs.ping("B", 0);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
    // A keeps pinging with the old view number; B dies; C is idle. No change: A has not
    // acknowledged view 2.
    vs.ping("C", 0);
    run(&mut vs, DEAD * 3, &[("A", 1), ("C", 2)]);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
    assert!(!vs.acked());
    // Even if A seems dead, B is not promoted: it may lack the state.
    vs.ping("B", 2);
    run(&mut vs, DEAD * 3, &[("B", 2), ("C", 2)]);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
    // The lecture's case: 1:A,B 2:B,C, B dies at once, C never got the state: the
    // service must stay in view 2 until B acknowledges.
    let mut vs = ab();
    vs.ping("C", 0);
    run(&mut vs, DEAD, &[("B", 2), ("C", 2)]);
    assert_eq!(vs.view(), &view(3, Some("B"), Some("C")));
    run(&mut vs, DEAD * 3, &[("C", 3)]);
    assert_eq!(vs.view(), &view(3, Some("B"), Some("C")));
    // Once B acknowledges (here: it comes back), the service may move on.
    vs.ping("B", 3);
    assert!(vs.acked());
    run(&mut vs, 1, &[("B", 3), ("C", 3)]);
    assert_eq!(vs.view(), &view(3, Some("B"), Some("C")));
}

#[test]
fn restarted_primary_treated_as_dead() {
    let mut vs = ab();
    // A restarts and pings with 0 at once: it is failed although it pings.
    let r = vs.ping("A", 0);
    assert_eq!(
        r.view,
        view(3, Some("B"), Some("A")),
        "A is fresh, so it may be backup"
    );
    // Without an idle server taking A's place: B primary, no backup, then A as backup.
    let mut vs = ab();
    vs.ping("C", 0);
    let r = vs.ping("A", 0);
    assert_eq!(r.view, view(3, Some("B"), Some("C")));
}

#[test]
fn restarted_backup_treated_as_dead() {
    let mut vs = ab();
    vs.ping("C", 0);
    let r = vs.ping("B", 0);
    assert_eq!(r.view, view(3, Some("A"), Some("C")));
    // With no idle server, the restarted backup is replaced by itself in a new view,
    // so that the primary transfers the state to it again.
    let mut vs = ab();
    let r = vs.ping("B", 0);
    assert_eq!(r.view, view(3, Some("A"), Some("B")));
}

#[test]
fn restarted_primary_without_backup_is_not_replaced_by_idle() {
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    vs.ping("A", 1);
    // A restarts: it lost the only copy. C is idle but must not become primary.
    vs.ping("A", 0);
    vs.ping("C", 0);
    run(&mut vs, DEAD * 3, &[("A", 1), ("C", 1)]);
    assert_eq!(vs.view(), &view(1, Some("A"), None));
}

#[test]
fn restarted_unacked_primary_ack_is_ignored() {
    // View 2 (A, B) unacknowledged; A restarts before acknowledging.
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    vs.ping("A", 1);
    vs.ping("B", 0);
    vs.ping("A", 0);
    // The restarted A learns view 2 and pings with 2: that is not an acknowledgement,
    // since B never got A's state.
    run(&mut vs, DEAD * 3, &[("A", 2), ("B", 2)]);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
    assert!(!vs.acked());
}

#[test]
fn lost_reply_to_first_ping_is_not_a_restart() {
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    // The reply was lost; A pings with 0 again. Not a failure: it never acknowledged.
    vs.ping("A", 0);
    let r = vs.ping("A", 1);
    assert_eq!(
        r,
        ViewReply {
            view: view(1, Some("A"), None),
            acked: true
        }
    );
}

#[test]
fn dead_after_n_missed_pings_live_after_one() {
    let mut vs = ab();
    vs.ping("C", 0);
    // C misses DEAD pings: dead.
    run(&mut vs, DEAD, &[("A", 2), ("B", 2)]);
    // B dies too: no idle server is live, so the backup slot stays empty.
    run(&mut vs, DEAD, &[("A", 2)]);
    assert_eq!(vs.view(), &view(3, Some("A"), None));
    vs.ping("A", 3);
    // One ping makes C live again, and it becomes backup.
    let r = vs.ping("C", 2);
    assert_eq!(r.view, view(4, Some("A"), Some("C")));
}

#[test]
fn primary_and_backup_dead_is_stuck() {
    let mut vs = ab();
    vs.ping("C", 0);
    run(&mut vs, DEAD * 4, &[("C", 2)]);
    // B was promoted? No: both died at the same time; B is not live.
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
}

#[test]
fn ping_claiming_a_future_view_has_no_effect() {
    // Fails before the fix: C's pings counted as signs of life and C became backup.
    let mut vs = ab();
    assert_eq!(
        vs.try_ping("C", 99),
        Err(PingError::FutureView {
            claimed: 99,
            current: 2
        })
    );
    run(&mut vs, DEAD, &[("B", 2), ("C", 99)]);
    assert_eq!(vs.view(), &view(3, Some("B"), None));
    // Nor in the primary's name: it neither acknowledges nor keeps B alive.
    vs.ping("B", 3);
    run(&mut vs, DEAD, &[("B", 99)]);
    assert_eq!(vs.view(), &view(3, Some("B"), None));
    assert!(vs.acked());
}

#[test]
fn tracked_servers_are_bounded_and_dead_spares_forgotten() {
    // Fails before the fix: every name that ever pinged was kept.
    let mut vs = ab();
    let spares: Vec<String> = (2..MAX_SERVERS).map(|i| format!("S{i}")).collect();
    for s in &spares {
        assert!(vs.try_ping(s, 0).is_ok());
    }
    assert_eq!(vs.try_ping("late", 0), Err(PingError::TooManyServers));
    assert!(vs.try_ping("S2", 2).is_ok(), "a tracked server still pings");
    // The spares die and are forgotten; then a new server is tracked again.
    run(&mut vs, DEAD * 2, &[("A", 2), ("B", 2)]);
    assert_eq!(vs.last_ping.len(), 2);
    assert!(vs.try_ping("late", 0).is_ok());
    // Members of the view are never forgotten, however long they are silent: view 2 is not
    // acknowledged, so it stays, and so do its members.
    let mut vs = ViewCore::new(DEAD);
    vs.ping("A", 0);
    vs.ping("A", 1);
    vs.ping("B", 0);
    run(&mut vs, DEAD * 10, &[]);
    assert_eq!(vs.view(), &view(2, Some("A"), Some("B")));
    assert!(vs.last_ping.contains_key("A") && vs.last_ping.contains_key("B"));
}
