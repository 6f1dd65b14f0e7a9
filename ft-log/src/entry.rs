//! Log entries. Every entry is tied to an *exit ordinal*: the number of synchronous exits
//! the guest has made, the only notion of "when" that is the same on both VMMs.

use serde::{Deserialize, Serialize};

/// What kind of synchronous exit the guest made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitKind {
    PioIn,
    PioOut,
    MmioRead,
    MmioWrite,
    Hlt,
    /// An emulation failure the host-compatibility module repaired.
    Repaired,
}

/// One synchronous exit as the recorder saw it: enough for the replayer to check its own
/// guest did the same (reason, RIP, port/address, size, value written or returned) and the
/// guest time the devices saw during it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub ordinal: u64,
    pub time_ns: u64,
    pub kind: ExitKind,
    pub rip: u64,
    /// Port or guest-physical address (0 for HLT and repairs).
    pub addr: u64,
    pub size: u8,
    /// Value written by the guest (out, MMIO write) or returned to it (in, MMIO read).
    pub value: u64,
}

/// One guest page (4 KiB) in a checkpoint delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    pub gpa: u64,
    /// As bytes, not as a sequence of u8 (the same encoding, encoded as one copy).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A checkpoint delta: the whole machine state at a point the recorder chose (the guest
/// had run too long without a synchronous exit, or the replayer needs to recover), as a
/// difference from the previous delta. vCPU and device states are opaque to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub ordinal: u64,
    pub time_ns: u64,
    /// A full checkpoint: `pages` lists every non-zero page and all others are zero (the
    /// final entry of a log, from which any diverged replayer can converge).
    pub full: bool,
    /// How `vcpu` and `devices` are sent (see [`crate::pages::StateCodec`]); a replayer
    /// decodes them as it reads the entry.
    pub state_encoding: crate::pages::StateEncoding,
    pub vcpu: Vec<u8>,
    pub devices: Vec<u8>,
    /// The pages, encoded against the replayer's copies (see [`crate::pages`]); a
    /// replayer decodes them as it reads the entry, so the machine sees whole pages.
    pub pages: crate::pages::PageSet,
}

/// A digest of a final machine state, to compare recorder and replayer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub memory_crc32: u32,
    pub vcpu_crc32: u32,
    pub devices_crc32: u32,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "memory {:08x} vcpu {:08x} devices {:08x}",
            self.memory_crc32, self.vcpu_crc32, self.devices_crc32
        )
    }
}

/// What the virtio-net device did with a received frame it was offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PacketOutcome {
    /// Written into the receive chain at `head`, `len` bytes with the virtio header.
    Delivered { head: u16, len: u32 },
    /// The next receive chain was too small: returned empty, the frame dropped.
    TooLarge { head: u16 },
    /// The receive queue was malformed: the device marked itself broken (NEEDS_RESET).
    Broken,
}

impl std::fmt::Display for PacketOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PacketOutcome::Delivered { head, len } => {
                write!(f, "delivered into chain {head} ({len} bytes)")
            }
            PacketOutcome::TooLarge { head } => write!(f, "too large for chain {head}"),
            PacketOutcome::Broken => write!(f, "receive queue broken"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// First entry of every log: the inputs fixed when the machine was created.
    Start { wall_clock_unix_secs: u64 },
    /// A synchronous exit (with the value a port or MMIO read returned).
    Exit(ExitRecord),
    /// Guest time moved while the vCPU was halted or kicked, at this ordinal.
    TimeSample { ordinal: u64, time_ns: u64 },
    /// Bytes moved into the serial port's receive FIFO at this ordinal.
    SerialInput { ordinal: u64, bytes: Vec<u8> },
    /// An interrupt injected at this ordinal (after the exit, or at a delta).
    Interrupt { ordinal: u64, vector: u8 },
    /// A checkpoint delta (boxed: it is large and rare).
    Delta(Box<Delta>),
    /// An Ethernet frame offered to the guest's virtio-net receive queue at this ordinal,
    /// and what the device did with it (the replayer offers the same bytes at the same
    /// point and checks it does the same).
    Packet {
        ordinal: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        outcome: PacketOutcome,
    },
    /// A disk request completed (reserved for the virtio-blk device).
    DiskCompletion {
        ordinal: u64,
        request: u64,
        status: u8,
    },
    /// The machine has a virtio-net card with this MAC (right after `Start`, when it has
    /// one): a replayer builds the same machine without being told.
    Nic { mac: [u8; 6] },
    /// The recorded run ended: why, and the digest of its final state.
    Shutdown {
        ordinal: u64,
        reason: String,
        digest: Digest,
    },
}

impl Entry {
    /// The ordinal this entry belongs to.
    pub fn ordinal(&self) -> u64 {
        match self {
            Entry::Start { .. } | Entry::Nic { .. } => 0,
            Entry::Exit(e) => e.ordinal,
            Entry::Delta(d) => d.ordinal,
            Entry::TimeSample { ordinal, .. }
            | Entry::SerialInput { ordinal, .. }
            | Entry::Interrupt { ordinal, .. }
            | Entry::Packet { ordinal, .. }
            | Entry::DiskCompletion { ordinal, .. }
            | Entry::Shutdown { ordinal, .. } => *ordinal,
        }
    }

    /// A one-byte kind, stored in each frame header so a reader can tell what a damaged
    /// frame was meant to be.
    pub fn kind(&self) -> u8 {
        match self {
            Entry::Exit(_) => 1,
            Entry::TimeSample { .. } => 2,
            Entry::SerialInput { .. } => 3,
            Entry::Interrupt { .. } => 4,
            Entry::Delta(_) => 5,
            Entry::Packet { .. } => 6,
            Entry::DiskCompletion { .. } => 7,
            Entry::Shutdown { .. } => 8,
            Entry::Start { .. } => 9,
            Entry::Nic { .. } => 10,
        }
    }

    pub fn kind_name(kind: u8) -> &'static str {
        match kind {
            1 => "exit",
            2 => "time sample",
            3 => "serial input",
            4 => "interrupt",
            5 => "delta",
            6 => "packet",
            7 => "disk completion",
            8 => "shutdown",
            9 => "start",
            10 => "nic",
            _ => "unknown",
        }
    }
}
