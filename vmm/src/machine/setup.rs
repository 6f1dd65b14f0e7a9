//! The steps of building a VM that depend on its configuration and its log: the PCI
//! part, the NIC's TAP and host side, the log's first entries, the exit trace.

use std::path::Path;
use std::sync::Arc;

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use super::{LogStream, VmError};
use crate::net::host::{self as nic_host, NetHost};
use crate::net::tap::Tap;
use crate::net::{NetError, NetSpec};
use crate::platform::{DiskBackend, NicSetup, PciSetup};
use crate::record::Recorder;
use crate::replay::Replayer;
use crate::vcpu::LogMode;

/// The PCI part of a machine with `disks` or a NIC; none without either.
pub(super) fn pci_setup(
    disks: Vec<DiskBackend>,
    nic: Option<NicSetup>,
    memory: &GuestMemoryMmap,
) -> Option<PciSetup> {
    (!disks.is_empty() || nic.is_some()).then(|| PciSetup {
        disks,
        nic,
        memory: memory.clone(),
    })
}

pub(super) fn is_replay(log: &LogStream) -> bool {
    matches!(log, LogStream::Replay(_) | LogStream::LiveReplay(..))
}

/// The TAP of `--net` (checked before the guest exists); a replayer opens none.
pub(super) fn open_tap(spec: Option<&NetSpec>, replaying: bool) -> Result<Option<Tap>, VmError> {
    match spec {
        Some(spec) if !replaying => Ok(Some(Tap::open(&spec.tap).map_err(NetError::from)?)),
        _ => Ok(None),
    }
}

/// The vCPU's log from its stream. Both sides of a log start from `mem` as it is now:
/// delta pages are encoded against it.
pub(super) fn open_log(
    log: LogStream,
    vm_fd: &Arc<VmFd>,
    mem: &GuestMemoryMmap,
) -> Result<LogMode, VmError> {
    let pages =
        |e: crate::pagesets::PageSetError| VmError::Record(crate::record::RecordError::Pages(e));
    Ok(match log {
        LogStream::Off => LogMode::Off,
        LogStream::Record(out, encoding) => {
            let encoder = crate::pagesets::encoder(mem, encoding).map_err(pages)?;
            LogMode::Record(Box::new(
                Recorder::new(out, vm_fd.clone(), encoder).map_err(VmError::Record)?,
            ))
        }
        LogStream::Replay(source) => LogMode::Replay(Box::new(
            Replayer::new(source).with_shadow(crate::pagesets::shadow(mem).map_err(pages)?),
        )),
        LogStream::LiveReplay(source, verified) => LogMode::Replay(Box::new(
            Replayer::live(source, verified)
                .with_shadow(crate::pagesets::shadow(mem).map_err(pages)?),
        )),
    })
}

/// The first entries of a log: a recorder writes the machine's start inputs and its NIC
/// (`nic`, its MAC), a replayer takes them from its log. Returns the wall-clock start and
/// the NIC to use.
pub(super) fn log_start(
    log: &mut LogMode,
    now_unix_secs: u64,
    nic: Option<[u8; 6]>,
) -> Result<(u64, Option<[u8; 6]>), VmError> {
    match log {
        LogMode::Off => Ok((now_unix_secs, nic)),
        LogMode::Record(rec) => {
            rec.log(&ft_log::Entry::Start {
                wall_clock_unix_secs: now_unix_secs,
            })
            .map_err(VmError::Record)?;
            if let Some(mac) = nic {
                rec.log(&ft_log::Entry::Nic { mac })
                    .map_err(VmError::Record)?;
            }
            Ok((now_unix_secs, nic))
        }
        LogMode::Replay(r) => match r.pop() {
            Ok(Some(ft_log::Entry::Start {
                wall_clock_unix_secs,
            })) => {
                // A live log (a backup's) has no NIC yet, and looking ahead in it would
                // wait for the primary's next entry, which may wait for this backup.
                let logged = if r.is_live() {
                    None
                } else {
                    match r.peek(0) {
                        Ok(Some(ft_log::Entry::Nic { mac })) => Some(*mac),
                        _ => None,
                    }
                };
                if logged.is_some() {
                    let _ = r.pop();
                }
                Ok((wall_clock_unix_secs, logged))
            }
            Ok(other) => Err(VmError::Replay(format!(
                "the log does not begin with a start record (found {:?})",
                other.map(|e| ft_log::Entry::kind_name(e.kind()))
            ))),
            Err(e) => Err(VmError::Replay(e.to_string())),
        },
    }
}

/// The NIC's configuration and host side, on a machine with one (`mac`).
/// A pair member's frames go through the output rule (`hooks.pair_nic`).
pub(super) fn attach_nic(
    mac: Option<[u8; 6]>,
    tap: Option<Tap>,
    hooks: &mut super::FtHooks,
) -> Result<(Option<NicSetup>, Option<NetHost>), VmError> {
    let pair = hooks.pair_nic.map(|role| {
        let exit_ordinal = hooks
            .exit_ordinal
            .get_or_insert_with(Default::default)
            .clone();
        let cap = crate::ft::frames::DEFAULT_FRAMES_CAP;
        match role {
            super::PairNicRole::Primary => nic_host::PairNic {
                gate: crate::ft::frames::FrameGate::primary(cap),
                exit_ordinal,
                receive_now: true,
            },
            super::PairNicRole::Backup => nic_host::PairNic {
                gate: crate::ft::frames::FrameGate::backup(cap),
                exit_ordinal,
                receive_now: false,
            },
        }
    });
    match mac {
        Some(mac) => {
            let (setup, host) = nic_host::attach(mac, tap, pair)?;
            Ok((Some(setup), host))
        }
        None => Ok((None, None)),
    }
}

pub(super) fn open_trace(
    path: Option<&Path>,
) -> Result<Option<Box<dyn std::io::Write + Send>>, VmError> {
    let Some(path) = path else { return Ok(None) };
    let file = std::fs::File::create(path).map_err(|source| VmError::Trace {
        path: path.to_owned(),
        source,
    })?;
    Ok(Some(Box::new(std::io::BufWriter::new(file))))
}
