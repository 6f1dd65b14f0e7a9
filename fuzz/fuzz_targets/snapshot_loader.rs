//! The snapshot loader on arbitrary files, and the whole machine state it hands on.
//!
//! Snapshots come from files anyone may have edited, and the same `VmState` (as JSON)
//! arrives from the primary in a state transfer. Two things are checked:
//!
//! 1. `ftvm::snapshot::load` on a directory holding the input's `manifest.json`,
//!    `state.json` and `memory.bin`: an error or a snapshot, never a panic, a hang or an
//!    allocation the files do not justify. Flags let the input past the checks a fuzzer
//!    cannot guess: bit 0 rewrites the manifest's format, version and state length and
//!    checksum to match; bit 1 also points it at a correct 8 MiB `memory.bin` (made once),
//!    so the load can succeed.
//! 2. The state bytes decoded as a `VmState`, validated (the vCPU part) and the platform
//!    restored from it (`PlatformState`'s `TryFrom`, every device's own validation), then
//!    driven by arbitrary port and MMIO accesses and time; its own saved state must then
//!    survive JSON, restore, and save identically.
//!
//! Input: byte 0 flags, a u16 LE length and the manifest, a u16 LE length and the state,
//! a u16 LE length and the memory file; the rest are the accesses.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use ftvm::platform::Platform;
use ftvm::snapshot;
use ftvm::state::VmState;
use ftvm_fuzz::{FuzzClock, Ops};
use libfuzzer_sys::fuzz_target;

/// The smallest guest the loader accepts, so a correct memory file stays small.
const MEM_MIB: u64 = ftvm::memory::MIN_MEM_MIB;

/// This process's scratch directories: one for the input's own files, one whose
/// `memory.bin` is a correct zero-filled image (written once; only the manifest and state
/// change).
fn dirs() -> &'static (PathBuf, PathBuf, u32) {
    static DIRS: OnceLock<(PathBuf, PathBuf, u32)> = OnceLock::new();
    DIRS.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("ftvm-fuzz-snapshot-{}", std::process::id()));
        let (own, good) = (base.join("own"), base.join("good"));
        std::fs::create_dir_all(&own).expect("scratch directory");
        std::fs::create_dir_all(&good).expect("scratch directory");
        let image = vec![0u8; (MEM_MIB << 20) as usize];
        std::fs::write(good.join("memory.bin"), &image).expect("memory image");
        (own, good, crc32fast::hash(&image))
    })
}

/// The manifest rewritten (if it is a JSON object) to match the state, and the memory
/// image when `good_memory`.
fn fix_manifest(manifest: &[u8], state: &[u8], good_memory: Option<u32>) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(manifest) else {
        return manifest.to_vec();
    };
    m.insert("format".into(), snapshot::FORMAT.into());
    m.insert("version".into(), snapshot::VERSION.into());
    m.insert(
        "state".into(),
        serde_json::json!({ "bytes": state.len(), "crc32": crc32fast::hash(state) }),
    );
    if let Some(crc) = good_memory {
        m.insert("mem_mib".into(), MEM_MIB.into());
        m.insert(
            "memory".into(),
            serde_json::json!({ "bytes": MEM_MIB << 20, "crc32": crc }),
        );
    }
    serde_json::to_vec(&m).unwrap_or_default()
}

fn load(dir: &Path, manifest: &[u8], state: &[u8], memory: Option<&[u8]>) {
    std::fs::write(dir.join("manifest.json"), manifest).expect("write manifest");
    std::fs::write(dir.join("state.json"), state).expect("write state");
    if let Some(memory) = memory {
        std::fs::write(dir.join("memory.bin"), memory).expect("write memory");
    }
    if let Ok(loaded) = snapshot::load(dir) {
        // What the loader accepted is what a restore builds from: it must be valid.
        assert_eq!(loaded.state.validate(), Ok(()));
        assert_eq!(loaded.manifest.mem_mib, MEM_MIB);
    }
}

fn restore(state: ftvm::platform::PlatformState, clock: &Arc<FuzzClock>) -> Option<Platform> {
    let console: ftvm::platform::ConsoleOut = Box::new(std::io::sink());
    Platform::restore(state, clock.clone(), console, Arc::new(AtomicU64::new(0)), None).ok()
}

/// Restore the platform from `state`, run the accesses, check its own state round-trips.
fn drive(state: VmState, ops: &mut Ops) {
    if state.validate().is_err() {
        return;
    }
    let clock = FuzzClock::new();
    let Some(platform) = restore(state.platform, &clock) else {
        return;
    };
    let mut steps = 0;
    while !ops.is_empty() && steps < 512 {
        steps += 1;
        let what = ops.u8();
        let size = [1usize, 2, 4, 8][usize::from(what >> 6)];
        match what % 5 {
            0 => {
                let mut data = vec![0u8; size.min(4)];
                platform.pio.read(u64::from(ops.u16()), &mut data);
            }
            1 => {
                let port = u64::from(ops.u16());
                let data = ops.bytes(size.min(4)).to_vec();
                platform.pio.write(port, &data);
            }
            2 => {
                let mut data = vec![0u8; size];
                platform.mmio.read(ops.u64(), &mut data);
            }
            3 => {
                let addr = ops.u64();
                let data = ops.bytes(size).to_vec();
                platform.mmio.write(addr, &data);
            }
            _ => {
                clock.advance(u64::from(ops.u16()) * 1000);
                platform.update_interrupts();
                if platform.interrupt_pending() {
                    platform.acknowledge();
                }
            }
        }
    }
    let saved = platform.state();
    let json = serde_json::to_vec(&saved).expect("a platform state encodes");
    let decoded: ftvm::platform::PlatformState =
        serde_json::from_slice(&json).expect("a saved platform state decodes");
    assert_eq!(decoded, saved, "JSON changed the platform state");
    let again = restore(decoded, &clock).expect("a platform restores from its own state");
    assert_eq!(again.state(), saved, "a restored platform saves differently");
}

fuzz_target!(|data: &[u8]| {
    let (own, good, image_crc) = dirs();
    let mut ops = Ops::new(data);
    let flags = ops.u8();
    let n = usize::from(ops.u16());
    let manifest = ops.bytes(n);
    let n = usize::from(ops.u16());
    let state = ops.bytes(n);
    let n = usize::from(ops.u16());
    let memory = ops.bytes(n);
    if flags & 2 != 0 {
        load(good, &fix_manifest(manifest, state, Some(*image_crc)), state, None);
    } else if flags & 1 != 0 {
        load(own, &fix_manifest(manifest, state, None), state, Some(memory));
    } else {
        load(own, manifest, state, Some(memory));
    }
    if let Ok(vm) = serde_json::from_slice::<VmState>(state) {
        drive(vm, &mut ops);
    }
});
