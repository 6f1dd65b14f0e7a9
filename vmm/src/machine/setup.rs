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

/// What a machine starts from besides its kernel or state: host inputs a recorder logs
/// first and a replayer takes from its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct StartInputs {
    /// The wall-clock start (CMOS), Unix seconds.
    pub wall_unix_secs: u64,
    /// The NIC's MAC, on a machine with one.
    pub nic: Option<[u8; 6]>,
    /// The random seed a booting kernel gets (never for a restored machine).
    pub boot_seed: Option<[u8; 32]>,
}

/// The first entries of a log: a recorder writes the machine's start inputs (`Start`,
/// then `Nic` and `BootSeed` where there are such), a replayer takes them from its log.
/// Returns the inputs to use.
pub(super) fn log_start(log: &mut LogMode, ours: StartInputs) -> Result<StartInputs, VmError> {
    match log {
        LogMode::Off => Ok(ours),
        LogMode::Record(rec) => {
            rec.log(&ft_log::Entry::Start {
                wall_clock_unix_secs: ours.wall_unix_secs,
            })
            .map_err(VmError::Record)?;
            if let Some(mac) = ours.nic {
                rec.log(&ft_log::Entry::Nic { mac })
                    .map_err(VmError::Record)?;
            }
            if let Some(seed) = ours.boot_seed {
                rec.log(&ft_log::Entry::BootSeed { seed })
                    .map_err(VmError::Record)?;
            }
            Ok(ours)
        }
        LogMode::Replay(r) => match r.pop() {
            Ok(Some(ft_log::Entry::Start {
                wall_clock_unix_secs,
            })) => {
                let mut logged = StartInputs {
                    wall_unix_secs: wall_clock_unix_secs,
                    nic: None,
                    boot_seed: None,
                };
                // A live log (a backup's) has no NIC or seed yet, and looking ahead in it
                // would wait for the primary's next entry, which may wait for this backup.
                if r.is_live() {
                    return Ok(logged);
                }
                if let Ok(Some(ft_log::Entry::Nic { mac })) = r.peek(0) {
                    logged.nic = Some(*mac);
                    let _ = r.pop();
                }
                if let Ok(Some(ft_log::Entry::BootSeed { seed })) = r.peek(0) {
                    logged.boot_seed = Some(*seed);
                    let _ = r.pop();
                }
                Ok(logged)
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
