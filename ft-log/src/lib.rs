//! ft-log: log entries and codec for record/replay (grows with issue 4).
