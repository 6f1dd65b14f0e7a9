//! The backup's side of the state transfer: memory, disks and the machine state, then
//! the channel's hello.

use std::time::{Duration, Instant};

use ft_log::channel::{MessageDecoder, ToBackup};
use ft_log::pages::{decode_onto, PageCodecError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{MachineState, TransferError, PAGE};
use crate::ft::link::recv;
use crate::ft::secure::SecureStream;

/// What a backup received: the machine to build, and the channel's hello.
pub struct Received {
    /// The guest memory, filled with the transferred pages.
    pub memory: GuestMemoryMmap,
    /// The machine state the primary sent.
    pub machine: MachineState,
    /// The primary's epoch, from its hello.
    pub epoch: u64,
    /// Where the console stream stood at the primary's hello.
    pub console_offset: u64,
    /// Pages received.
    pub pages: u64,
    /// Disk bytes received (zero chunks not counted).
    pub disk_bytes: u64,
}

/// Backup: receive the primary's state from `stream` (whose read timeout bounds each wait).
pub fn receive_state(
    stream: &mut SecureStream,
    dec: &mut MessageDecoder<ToBackup>,
    vm_name: &str,
    limit: Duration,
    disks: &[(crate::disk::FileBackend, bool)],
) -> Result<Received, TransferError> {
    let mut disk_rx = crate::ft::disk_copy::DiskReceiver::new(disks);
    let deadline = Instant::now() + limit;
    let mut next = |stream: &mut SecureStream| -> Result<ToBackup, TransferError> {
        loop {
            if let Some(m) = recv(stream, dec)? {
                return Ok(m);
            }
            if Instant::now() > deadline {
                return Err(TransferError::Timeout(limit));
            }
        }
    };
    let (epoch, mem_mib, console_offset) = match next(stream)? {
        ToBackup::Hello {
            vm_name: name,
            epoch,
            mem_mib,
            console_offset,
        } => {
            if name != vm_name {
                return Err(TransferError::Invalid {
                    what: "hello",
                    reason: format!("it runs VM '{name}', this backup is for '{vm_name}'"),
                });
            }
            crate::memory::check_size(mem_mib).map_err(|e| TransferError::Invalid {
                what: "memory size",
                reason: e.to_string(),
            })?;
            (epoch, mem_mib, console_offset)
        }
        _ => {
            return Err(TransferError::Invalid {
                what: "first message",
                reason: "not a hello".into(),
            })
        }
    };
    let memory = crate::memory::create(mem_mib).map_err(|e| TransferError::Invalid {
        what: "memory size",
        reason: e.to_string(),
    })?;
    let mut pages = 0u64;
    let max_pages = crate::memory::page_addresses(&memory).count();
    let started = Instant::now();
    loop {
        match next(stream)? {
            ToBackup::Pages(set) => {
                // The backup's memory holds exactly what was sent before: the base.
                let batch = decode_onto(set, max_pages, |gpa, buf| {
                    memory
                        .read_slice(buf, GuestAddress(gpa))
                        .map_err(|_| PageCodecError::Base { gpa })
                })?;
                for p in batch {
                    if p.gpa % PAGE as u64 != 0 {
                        return Err(TransferError::Invalid {
                            what: "page",
                            reason: format!("{} bytes at {:#x}", p.data.len(), p.gpa),
                        });
                    }
                    memory
                        .write_slice(&p.data, GuestAddress(p.gpa))
                        .map_err(|e| TransferError::Invalid {
                            what: "page",
                            reason: format!("{:#x}: {e}", p.gpa),
                        })?;
                    pages += 1;
                    if pages.is_multiple_of(16384) {
                        tracing::info!(
                            mib = (pages * PAGE as u64) >> 20,
                            secs = started.elapsed().as_secs_f64(),
                            "state transfer: received"
                        );
                    }
                }
            }
            ToBackup::Disks { bytes } => disk_rx.announce(&bytes)?,
            ToBackup::DiskChunk {
                disk,
                offset,
                len,
                data,
            } => disk_rx.chunk(disk, offset, len, &data)?,
            ToBackup::Machine { ordinal, state } => {
                disk_rx.finish()?;
                let machine: MachineState = crate::state::wire::decode("machine state", &state)?;
                machine
                    .vm
                    .validate()
                    .map_err(|reason| TransferError::Invalid {
                        what: "machine state",
                        reason,
                    })?;
                if machine.mem_mib != mem_mib || machine.vm.vcpu.ordinal != ordinal {
                    return Err(TransferError::Invalid {
                        what: "machine state",
                        reason: format!(
                            "{} MiB at exit {} after a hello of {mem_mib} MiB at exit {ordinal}",
                            machine.mem_mib, machine.vm.vcpu.ordinal
                        ),
                    });
                }
                return Ok(Received {
                    memory,
                    machine,
                    epoch,
                    console_offset,
                    pages,
                    disk_bytes: disk_rx.bytes,
                });
            }
            ToBackup::Heartbeat => {}
            ToBackup::Log(_) | ToBackup::Hello { .. } | ToBackup::Goodbye => {
                return Err(TransferError::Invalid {
                    what: "message",
                    reason: "log, hello or goodbye before the machine state".into(),
                })
            }
        }
    }
}
