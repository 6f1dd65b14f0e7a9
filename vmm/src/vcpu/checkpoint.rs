//! Loading a checkpoint delta into the replaying machine: vCPU, devices, pages.

use ft_log::Delta;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::logged::LogMode;
use super::{Vcpu, VcpuError};
use crate::compat::CompatError;
use crate::platform::PlatformError;
use crate::state::wire;

/// Why a delta could not be loaded (the replay stops).
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot load the delta's machine state")]
    Decode(#[from] wire::WireError),
    #[error("delta vCPU: {0}")]
    VcpuInvalid(String),
    #[error("delta pages not decoded")]
    PagesNotDecoded,
    #[error("page {gpa:#x}: {error}")]
    Zero { gpa: u64, error: GuestMemoryError },
    #[error("delta page {gpa:#x}: {error}")]
    Page { gpa: u64, error: GuestMemoryError },
    #[error(transparent)]
    Compat(#[from] CompatError),
    #[error(transparent)]
    Devices(#[from] PlatformError),
}

/// Zero every page of guest RAM that a full checkpoint does not list (and is not zero).
fn zero_pages_not_in(mem: &GuestMemoryMmap, pages: &[ft_log::Page]) -> Result<(), DeltaError> {
    let listed: std::collections::HashSet<u64> = pages.iter().map(|p| p.gpa).collect();
    let zero = [0u8; crate::memory::PAGE_SIZE as usize];
    let mut cur = zero;
    for gpa in crate::memory::page_addresses(mem).filter(|gpa| !listed.contains(gpa)) {
        let at = GuestAddress(gpa);
        let failed = |error| DeltaError::Zero { gpa, error };
        mem.read_slice(&mut cur, at).map_err(failed)?;
        if cur != zero {
            mem.write_slice(&zero, at).map_err(failed)?;
        }
    }
    Ok(())
}

/// Pages where guest memory differs from a full checkpoint (listed pages that differ, and
/// unlisted pages that are not zero).
pub(super) fn differing_pages(mem: &GuestMemoryMmap, d: &Delta) -> usize {
    let listed: std::collections::HashMap<u64, &Vec<u8>> = d
        .pages
        .decoded()
        .unwrap_or_default()
        .iter()
        .map(|p| (p.gpa, &p.data))
        .collect();
    let mut cur = vec![0u8; crate::memory::PAGE_SIZE as usize];
    crate::memory::page_addresses(mem)
        .filter(|&gpa| {
            mem.read_slice(&mut cur, GuestAddress(gpa)).is_ok()
                && match listed.get(&gpa) {
                    Some(data) => cur != **data,
                    None => cur.iter().any(|&b| b != 0),
                }
        })
        .count()
}

impl Vcpu {
    /// Load a delta into the machine: vCPU, devices, pages.
    pub(super) fn apply_delta(&mut self, d: Delta) -> Result<(), DeltaError> {
        // Our own last exit's I/O would otherwise complete on top of the loaded state.
        self.settle()?;
        let vcpu: crate::state::VcpuState = wire::decode("vCPU state", &d.vcpu)?;
        vcpu.validate().map_err(DeltaError::VcpuInvalid)?;
        tracing::trace!(
            ordinal = d.ordinal,
            rip = format_args!("{:#x}", vcpu.regs.rip),
            rflags = format_args!("{:#x}", vcpu.regs.rflags),
            cpl = vcpu.sregs.cs.dpl,
            exception = ?(vcpu.events.exception.injected, vcpu.events.exception.pending, vcpu.events.exception.nr),
            shadow = vcpu.events.interrupt.shadow,
            "loading a checkpoint"
        );
        let devices: crate::platform::PlatformState = wire::decode("device state", &d.devices)?;
        let pages = d.pages.decoded().ok_or(DeltaError::PagesNotDecoded)?;
        if d.full {
            zero_pages_not_in(&self.memory, pages)?;
        }
        for page in pages {
            self.memory
                .write_slice(&page.data, GuestAddress(page.gpa))
                .map_err(|error| DeltaError::Page {
                    gpa: page.gpa,
                    error,
                })?;
        }
        if !d.pages.is_empty() {
            // KVM did not see those writes (see compat::shadow_mmu).
            self.memory_slots.reload(&self.memory)?;
            self.metrics.compat.slot_reloads += 1;
        }
        self.clock.freeze(d.time_ns);
        self.clock.advance_to(d.time_ns);
        self.platform.load_state(devices)?;
        vcpu.restore(&self.fd)?;
        crate::pagecheck::at_delta(&self.memory, d.ordinal);
        self.ordinal = d.ordinal;
        self.repair_after_state_load()?;
        self.halted = vcpu.halted;
        self.if_flag = vcpu.regs.rflags & 0x200 != 0;
        if let LogMode::Replay(r) = &mut self.log {
            r.stats.deltas_applied += 1;
            r.stats.delta_pages_applied += d.pages.len() as u64;
            // The machine is now exactly the recorder's at this point.
            r.set_verified(d.ordinal);
            r.delta_applied();
        }
        self.publish_ordinal();
        Ok(())
    }
}
