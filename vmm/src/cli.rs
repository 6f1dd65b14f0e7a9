//! The `ftvm` command line: arguments (`args.rs`) and each subcommand's body: a single
//! VMM (`single.rs`: run, record, replay, and `report.rs` for what it prints at the end),
//! a pair member (`pair.rs`: primary, backup, keygen), and the pair's shared directory
//! (`shared_dir.rs`: status, console). Here: what they share (stdin, stdout, signals).

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;

pub mod args;
pub mod pair;
pub mod report;
pub mod shared_dir;
pub mod single;

/// Serial output straight to stdout, flushed at once so prompts appear.
pub(crate) struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

pub(crate) static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Bytes from our stdin, for the guest's serial port. The channel closes at end of input.
pub(crate) fn spawn_stdin_reader() -> crossbeam_channel::Receiver<Vec<u8>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    rx
}

pub(crate) fn install_stop_signals() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal)
            .context("cannot install signal handlers")?;
    }
    Ok(())
}
