//! File operations on the shared directory with a deadline. A call stuck in the kernel on
//! a dead network mount cannot be interrupted; it is run on its own thread, and the VMM
//! stops waiting for it after a limit and acts on "no answer" (a claim not answered is a
//! claim not won, DESIGN.md section 3: a VMM that cannot reach the shared storage does
//! not go on). The stuck thread is left behind; it holds nothing the VMM needs. Also what
//! a socket read whose timeout expired looks like ([`read_timed_out`]).

use std::time::Duration;

/// Whether a failed read on a socket is its read timeout expiring (`SO_RCVTIMEO`: Linux
/// reports `EAGAIN`, other systems `ETIMEDOUT`), not a broken connection.
pub fn read_timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// How long the shared directory may take to answer one operation.
pub const FILE_LIMIT: Duration = Duration::from_secs(10);

/// `op`'s result, or `None` when it did not finish within `limit` (or its thread could
/// not be started: equally no answer).
pub fn within<T: Send + 'static>(
    limit: Duration,
    op: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("ft-shared-file".into())
        .spawn(move || {
            let _ = tx.send(op());
        })
        .ok()?;
    rx.recv_timeout(limit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_time_or_gives_up() {
        assert_eq!(within(Duration::from_secs(5), || 7), Some(7));
        let t = std::time::Instant::now();
        let stuck = within(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(2));
            1
        });
        assert_eq!(stuck, None);
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
