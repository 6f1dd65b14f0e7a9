//! The view service's state machine: pure and deterministic, time passed in as ticks.
//!
//! Servers ping the view service every ping interval with the number of the view they have
//! completed; the service calls [`ViewCore::tick`] once per interval. The rules, from the
//! primary/backup lecture:
//!
//! - A server is *dead* once `dead_pings` ticks have passed without a ping from it, and
//!   *live* again after a single ping.
//! - The first server to ping becomes the primary of view 1 (without backup).
//! - When the primary dies, the backup becomes primary and a live idle server (if any)
//!   becomes the new backup. When there is no live backup the service is stuck: the primary
//!   of view i+1 must have been the primary or the backup of view i (rule 1), so an idle
//!   server, which has no state, is never made primary.
//! - When the backup dies, or the slot is empty, a live idle server becomes backup.
//! - The service never moves to a new view until the primary of the current view has
//!   acknowledged it (pinged with its number), even if that primary seems dead: the
//!   primary acknowledges a view only after its backup has the full state, so this is how
//!   the service knows the backup can take over.
//! - A server that pings with view number 0 has restarted and lost its state: if it is in
//!   the current view it is treated as failed (as if dead, even though it pings), and its
//!   acknowledgements are ignored until the view changes. The one exception is the primary
//!   of view 1 before it has acknowledged: it cannot have served anything yet (a primary
//!   serves only after its acknowledgement is recorded), so a repeated first ping (its
//!   reply was lost) is not a failure.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::{View, ViewReply};

/// The view service's state.
#[derive(Clone, Debug)]
pub struct ViewCore {
    dead_pings: u64,
    now: u64,
    view: View,
    acked: bool,
    /// Tick of each server's last ping.
    last_ping: BTreeMap<String, u64>,
    /// Members of the current view that restarted since it began.
    failed: BTreeSet<String>,
}

impl ViewCore {
    /// A view service that declares a server dead after `dead_pings` ticks without a ping
    /// (at least 1).
    pub fn new(dead_pings: u64) -> ViewCore {
        ViewCore {
            dead_pings: dead_pings.max(1),
            now: 0,
            view: View::default(),
            acked: false,
            last_ping: BTreeMap::new(),
            failed: BTreeSet::new(),
        }
    }

    /// The current view and whether its primary acknowledged it.
    pub fn reply(&self) -> ViewReply {
        ViewReply {
            view: self.view.clone(),
            acked: self.acked,
        }
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    pub fn acked(&self) -> bool {
        self.acked
    }

    /// Handles a ping from `server`, which has completed view `viewnum` (0: it restarted).
    pub fn ping(&mut self, server: &str, viewnum: u64) -> ViewReply {
        self.last_ping.insert(server.to_string(), self.now);
        if self.view.num == 0 {
            // The first server to ping becomes primary of view 1.
            self.new_view(Some(server.to_string()), None);
            return self.reply();
        }
        let member = self.view.is_primary(server) || self.view.is_backup(server);
        if viewnum == 0 && member {
            let fresh_first_primary =
                self.view.num == 1 && self.view.is_primary(server) && !self.acked;
            if !fresh_first_primary {
                self.failed.insert(server.to_string());
            }
        }
        if self.view.is_primary(server) && viewnum == self.view.num && !self.failed.contains(server)
        {
            self.acked = true;
        }
        self.advance();
        self.reply()
    }

    /// One ping interval has passed.
    pub fn tick(&mut self) {
        self.now += 1;
        self.advance();
    }

    /// Whether `server` pinged within the last `dead_pings` ticks.
    fn pinged_recently(&self, server: &str) -> bool {
        self.last_ping
            .get(server)
            .is_some_and(|&t| self.now - t < self.dead_pings)
    }

    /// Whether `server`, a member of the current view, is alive for the view's purposes.
    fn member_ok(&self, server: &str) -> bool {
        self.pinged_recently(server) && !self.failed.contains(server)
    }

    /// A live server to be the backup under `primary`: preferably one outside the current
    /// view, otherwise a restarted member (it has no state, but it will get a transfer).
    fn pick_backup(&self, primary: &str) -> Option<String> {
        let live = self
            .last_ping
            .keys()
            .filter(|s| s.as_str() != primary && self.pinged_recently(s));
        let mut fallback = None;
        for s in live {
            let member = self.view.is_primary(s) || self.view.is_backup(s);
            if !member {
                return Some(s.clone());
            }
            if self.failed.contains(s) && fallback.is_none() {
                fallback = Some(s.clone());
            }
        }
        fallback
    }

    fn advance(&mut self) {
        if self.view.num == 0 || !self.acked {
            // No view yet, or the primary has not acknowledged the current one: stay.
            return;
        }
        let Some(primary) = self.view.primary.clone() else {
            return;
        };
        let backup = self.view.backup.clone();
        if !self.member_ok(&primary) {
            // Promote the backup if it is alive; otherwise nobody with the state is left.
            if let Some(b) = backup.filter(|b| self.member_ok(b)) {
                let next = self.pick_backup(&b);
                self.new_view(Some(b), next);
            }
            return;
        }
        match backup {
            Some(b) if !self.member_ok(&b) => {
                let next = self.pick_backup(&primary);
                self.new_view(Some(primary), next);
            }
            None => {
                if let Some(next) = self.pick_backup(&primary) {
                    self.new_view(Some(primary), Some(next));
                }
            }
            Some(_) => {}
        }
    }

    fn new_view(&mut self, primary: Option<String>, backup: Option<String>) {
        self.view = View {
            num: self.view.num + 1,
            primary,
            backup,
        };
        self.acked = false;
        self.failed.clear();
    }
}

#[cfg(test)]
mod tests {
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
}
