//! The serial console's output side: a writer that also watches for a line of text (to
//! take a snapshot when a guest says it is ready, for example).

use std::collections::VecDeque;
use std::io::Write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

/// Passes output through to `inner`; when `pattern` first appears it asks the vCPU to
/// pause at its next exit (so the guest is caught right there) and sends one message.
pub struct WatchedConsole<W: Write> {
    inner: W,
    pattern: Vec<u8>,
    window: VecDeque<u8>,
    notify: Option<Sender<()>>,
    pause: Arc<AtomicBool>,
}

impl<W: Write> WatchedConsole<W> {
    /// Wrap `inner`, watching for `pattern` (an empty pattern watches for nothing); on a
    /// match, set `pause` and send once on `notify`.
    pub fn new(inner: W, pattern: &str, notify: Sender<()>, pause: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            pattern: pattern.as_bytes().to_vec(),
            window: VecDeque::with_capacity(pattern.len()),
            notify: (!pattern.is_empty()).then_some(notify),
            pause,
        }
    }

    fn watch(&mut self, bytes: &[u8]) {
        let Some(tx) = &self.notify else { return };
        for &b in bytes {
            if self.window.len() == self.pattern.len() {
                self.window.pop_front();
            }
            self.window.push_back(b);
            if self.window.iter().eq(self.pattern.iter()) {
                self.pause.store(true, Ordering::SeqCst);
                // The receiver may be gone (VM stopping): nothing to notify then.
                let _ = tx.send(());
                self.notify = None;
                return;
            }
        }
    }
}

impl<W: Write> Write for WatchedConsole<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.watch(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_once_across_writes() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let pause = Arc::new(AtomicBool::new(false));
        let mut c = WatchedConsole::new(Vec::new(), "ready", tx, pause.clone());
        c.write_all(b"not rea").unwrap();
        assert!(rx.try_recv().is_err());
        assert!(!pause.load(Ordering::SeqCst));
        c.write_all(b"dy yet? ready").unwrap();
        assert!(pause.load(Ordering::SeqCst));
        assert!(rx.try_recv().is_ok());
        c.write_all(b"ready").unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(c.inner, b"not ready yet? readyready");
    }
}
