//! A bounded byte pipe between the vCPU thread and the logging channel's network thread.
//!
//! On the primary the recorder writes into it and the sender drains it onto TCP: when it is
//! full the recorder (and so the guest) stalls. On the backup the receiver fills it from TCP
//! and the replayer reads it: when it is empty the replayer (and so the guest) stalls.
//!
//! Two ways to end it: `close` is an orderly end of stream (readers drain, then see end of
//! file: a backup goes live there), `abort` drops what is buffered; writes then vanish
//! without blocking (a primary whose backup is gone must not stall on it) and reads fail
//! (a backup that lost the test-and-set stops replaying).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Debug, Default)]
struct State {
    buf: VecDeque<u8>,
    closed: bool,
    aborted: bool,
    /// Bytes ever written and ever read (for status: lag in bytes).
    written: u64,
    read: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    capacity: usize,
}

/// Both ends of one pipe (clone it to hand an end to another thread).
#[derive(Debug, Clone)]
pub struct Pipe(Arc<Shared>);

impl Pipe {
    /// An empty, open pipe buffering at most `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            capacity: capacity.max(1),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::bus::lock(&self.0.state)
    }

    /// End of stream after what is buffered.
    pub fn close(&self) {
        self.lock().closed = true;
        self.0.changed.notify_all();
    }

    /// Drop what is buffered; later writes vanish, reads fail.
    pub fn abort(&self) {
        let mut s = self.lock();
        s.aborted = true;
        s.buf.clear();
        drop(s);
        self.0.changed.notify_all();
    }

    /// Bytes buffered now.
    pub fn fill(&self) -> usize {
        self.lock().buf.len()
    }

    /// Most bytes the pipe buffers.
    pub fn capacity(&self) -> usize {
        self.0.capacity
    }

    /// (bytes ever written, bytes ever read).
    pub fn totals(&self) -> (u64, u64) {
        let s = self.lock();
        (s.written, s.read)
    }

    /// Take up to `max` bytes, waiting at most `wait` for the first; an empty result
    /// means nothing came (or the pipe is closed and drained: see `is_finished`).
    pub fn drain_up_to(&self, max: usize, wait: std::time::Duration) -> Vec<u8> {
        let mut s = self.lock();
        if s.buf.is_empty() && !s.closed && !s.aborted {
            s = self
                .0
                .changed
                .wait_timeout(s, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let n = s.buf.len().min(max);
        let out: Vec<u8> = s.buf.drain(..n).collect();
        s.read += n as u64;
        drop(s);
        if n > 0 {
            self.0.changed.notify_all();
        }
        out
    }

    /// Closed (or aborted) and nothing left to read.
    pub fn is_finished(&self) -> bool {
        let s = self.lock();
        s.aborted || (s.closed && s.buf.is_empty())
    }
}

impl Write for Pipe {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut s = self.lock();
        loop {
            if s.aborted {
                return Ok(data.len());
            }
            if s.closed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the logging channel is closed",
                ));
            }
            let room = self.0.capacity.saturating_sub(s.buf.len());
            if room > 0 {
                let n = room.min(data.len());
                s.buf.extend(&data[..n]);
                s.written += n as u64;
                drop(s);
                self.0.changed.notify_all();
                return Ok(n);
            }
            s = self.0.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Read for Pipe {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let mut s = self.lock();
        loop {
            if s.aborted {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the logging channel was abandoned",
                ));
            }
            if !s.buf.is_empty() {
                let n = s.buf.len().min(out.len());
                for (o, b) in out.iter_mut().zip(s.buf.drain(..n)) {
                    *o = b;
                }
                s.read += n as u64;
                drop(s);
                self.0.changed.notify_all();
                return Ok(n);
            }
            if s.closed {
                return Ok(0);
            }
            s = self.0.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn carries_bytes_in_order_and_ends_at_close() {
        let p = Pipe::new(4);
        let mut w = p.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(b"hello, backup").unwrap();
            w.close();
        });
        let mut got = Vec::new();
        let mut r = p.clone();
        r.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, b"hello, backup");
        assert_eq!(p.totals(), (13, 13));
    }

    #[test]
    fn a_full_pipe_stalls_the_writer_until_read() {
        let p = Pipe::new(2);
        let mut w = p.clone();
        assert_eq!(w.write(b"abc").unwrap(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            w.write_all(b"c").unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(50)).is_err(),
            "must stall"
        );
        assert_eq!(p.drain_up_to(1, Duration::ZERO), b"a");
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(p.drain_up_to(10, Duration::ZERO), b"bc");
    }

    #[test]
    fn abort_unblocks_a_stalled_writer_and_fails_readers() {
        let p = Pipe::new(1);
        let mut w = p.clone();
        w.write_all(b"x").unwrap();
        let t = std::thread::spawn(move || w.write_all(b"yz"));
        std::thread::sleep(Duration::from_millis(20));
        p.abort();
        t.join().unwrap().unwrap();
        let mut r = p.clone();
        assert!(r.read(&mut [0u8; 4]).is_err());
        assert!(p.is_finished());
        assert_eq!(p.fill(), 0);
    }

    #[test]
    fn writing_after_close_is_an_error() {
        let p = Pipe::new(8);
        p.close();
        let mut w = p.clone();
        assert!(w.write(b"late").is_err());
        assert!(p.is_finished());
        assert!(p.drain_up_to(4, Duration::from_millis(1)).is_empty());
    }
}
