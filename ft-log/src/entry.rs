//! Log entries. Every entry is tied to an *exit ordinal*: the number of synchronous exits
//! the guest has made, the only notion of "when" that is the same on both VMMs.

use serde::{Deserialize, Serialize};

/// What kind of synchronous exit the guest made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitKind {
    /// A port read (`in`): the value is what the device returned.
    PioIn,
    /// A port write (`out`): the value is what the guest wrote.
    PioOut,
    /// A read of device memory: the value is what the device returned.
    MmioRead,
    /// A write to device memory: the value is what the guest wrote.
    MmioWrite,
    /// The guest executed HLT.
    Hlt,
    /// An emulation failure the host-compatibility module repaired.
    Repaired,
}

/// One synchronous exit as the recorder saw it: enough for the replayer to check its own
/// guest did the same (reason, RIP, port/address, size, value written or returned) and the
/// guest time the devices saw during it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Which exit this is: 1 for the guest's first synchronous exit, and so on.
    pub ordinal: u64,
    /// Guest time, in nanoseconds, that devices saw during this exit.
    pub time_ns: u64,
    /// Why the guest exited.
    pub kind: ExitKind,
    /// Guest instruction pointer at the exit.
    pub rip: u64,
    /// Port or guest-physical address (0 for HLT and repairs).
    pub addr: u64,
    /// Access width in bytes (0 for HLT and repairs).
    pub size: u8,
    /// Value written by the guest (out, MMIO write) or returned to it (in, MMIO read).
    pub value: u64,
}

/// One guest page (4 KiB) in a checkpoint delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Guest-physical address of the page (4 KiB aligned).
    pub gpa: u64,
    /// The page's 4096 bytes.
    ///
    /// As bytes, not as a sequence of u8 (the same encoding, encoded as one copy).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A checkpoint delta: the whole machine state at a point the recorder chose (the guest
/// had run too long without a synchronous exit, or the replayer needs to recover), as a
/// difference from the previous delta. vCPU and device states are opaque to the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Exit ordinal the checkpoint was taken at.
    pub ordinal: u64,
    /// Guest time at the checkpoint, in nanoseconds.
    pub time_ns: u64,
    /// A full checkpoint: `pages` lists every non-zero page and all others are zero (the
    /// final entry of a log, from which any diverged replayer can converge).
    pub full: bool,
    /// How `vcpu` and `devices` are sent (see [`crate::pages::StateCodec`]); a replayer
    /// decodes them as it reads the entry.
    pub state_encoding: crate::pages::StateEncoding,
    /// The vCPU state, encoded by the VMM (and then as `state_encoding` says).
    pub vcpu: Vec<u8>,
    /// The device states, encoded by the VMM (and then as `state_encoding` says).
    pub devices: Vec<u8>,
    /// The pages, encoded against the replayer's copies (see [`crate::pages`]); a
    /// replayer decodes them as it reads the entry, so the machine sees whole pages.
    pub pages: crate::pages::PageSet,
}

/// A digest of a final machine state, to compare recorder and replayer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// CRC32 of all of guest memory, region after region.
    pub memory_crc32: u32,
    /// CRC32 of the vCPU's registers, as the VMM encodes them.
    pub vcpu_crc32: u32,
    /// CRC32 of the device states, as the VMM encodes them.
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
    Delivered {
        /// Descriptor index of the head of the receive chain used.
        head: u16,
        /// Bytes written into the chain, virtio header included.
        len: u32,
    },
    /// The next receive chain was too small: returned empty, the frame dropped.
    TooLarge {
        /// Descriptor index of the head of the chain that was too small.
        head: u16,
    },
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

/// A point between two synchronous exits where the recorder delivered an event (the vCPU
/// was kicked in guest kernel mode), named so that the replayer can find it again: it runs
/// with a hardware breakpoint on `rip` and stops at the pass whose registers are these.
/// Replaces a checkpoint delta where the host's breakpoints are exact (see the VMM's
/// `vcpu/points.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventPoint {
    /// Exit ordinal of the last synchronous exit before the point.
    pub ordinal: u64,
    /// Guest time at the point, in nanoseconds.
    pub time_ns: u64,
    /// Guest instruction pointer: the instruction not yet executed.
    pub rip: u64,
    /// RFLAGS there.
    pub rflags: u64,
    /// The general registers there, in KVM's order (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp,
    /// r8..r15). RCX is the count of a `rep` string instruction stopped part way.
    pub gprs: [u64; 16],
    /// Guest branches retired since the last exit, on hosts whose PMU can count them (none
    /// here: always `None`); with it a replayer could stop at the exact pass without
    /// comparing registers (see the README's design note on hosts with a PMU).
    pub branches: Option<u64>,
}

/// One record of the log: an input or event the replayer must reproduce, tied to the exit
/// ordinal at which it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// First entry of every log: the inputs fixed when the machine was created.
    Start {
        /// The real-time clock's starting time (CMOS), in seconds since the Unix epoch.
        wall_clock_unix_secs: u64,
    },
    /// A synchronous exit (with the value a port or MMIO read returned).
    Exit(ExitRecord),
    /// Guest time moved while the vCPU was halted or kicked, at this ordinal.
    TimeSample {
        /// Exit ordinal the sample follows.
        ordinal: u64,
        /// Guest time, in nanoseconds, from this point on.
        time_ns: u64,
    },
    /// Bytes moved into the serial port's receive FIFO at this ordinal.
    SerialInput {
        /// Exit ordinal the bytes arrived at.
        ordinal: u64,
        /// The bytes, in arrival order.
        bytes: Vec<u8>,
    },
    /// An interrupt injected at this ordinal (after the exit, or at a delta).
    Interrupt {
        /// Exit ordinal the interrupt was injected at.
        ordinal: u64,
        /// Interrupt vector injected into the vCPU.
        vector: u8,
    },
    /// A checkpoint delta (boxed: it is large and rare).
    Delta(Box<Delta>),
    /// An Ethernet frame offered to the guest's virtio-net receive queue at this ordinal,
    /// and what the device did with it (the replayer offers the same bytes at the same
    /// point and checks it does the same).
    Packet {
        /// Exit ordinal the frame was offered at.
        ordinal: u64,
        /// The Ethernet frame, without the virtio header.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// What the device did with it.
        outcome: PacketOutcome,
    },
    /// A disk request completed (reserved for the virtio-blk device).
    DiskCompletion {
        /// Exit ordinal the completion happened at.
        ordinal: u64,
        /// Which request completed (numbered by the device).
        request: u64,
        /// The status byte the device reported to the guest.
        status: u8,
    },
    /// The machine has a virtio-net card with this MAC (right after `Start`, when it has
    /// one): a replayer builds the same machine without being told.
    Nic {
        /// The card's Ethernet address.
        mac: [u8; 6],
    },
    /// The recorded run ended: why, and the digest of its final state.
    Shutdown {
        /// Exit ordinal the run ended at.
        ordinal: u64,
        /// Why it ended, in words (for people, not for matching).
        reason: String,
        /// Digest of the final machine state, for the replayer to compare with its own.
        digest: Digest,
    },
    /// An event delivered between exits at this point (instead of a delta, see
    /// [`EventPoint`]); the entries that follow at the same ordinal are what was delivered.
    /// Last, so that the older variants keep their encoding.
    Point(Box<EventPoint>),
    /// Console output the primary held, not yet acknowledged, when it took the full
    /// checkpoint that follows (at the same ordinal) for a backup that had diverged: the
    /// backup's own replay never produced these bytes, and the acknowledgement of the
    /// checkpoint releases them on both sides, so the backup must hold them too (they
    /// reach the console stream even if the primary dies right after that ack).
    HeldOutput {
        /// The checkpoint's exit ordinal: the bytes were all written at or before it.
        ordinal: u64,
        /// The guest's console position (its count of bytes written) of the first byte.
        position: u64,
        /// The bytes, in order.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// The random seed the guest kernel was booted with (Linux's `SETUP_RNG_SEED` boot
    /// data, after `Start` and `Nic`): a host input like the wall clock, so a replay of
    /// the boot gives its kernel the same one.
    BootSeed {
        /// The seed's bytes.
        seed: [u8; 32],
    },
}

impl Entry {
    /// The ordinal this entry belongs to.
    pub fn ordinal(&self) -> u64 {
        match self {
            Entry::Start { .. } | Entry::Nic { .. } | Entry::BootSeed { .. } => 0,
            Entry::Exit(e) => e.ordinal,
            Entry::Delta(d) => d.ordinal,
            Entry::Point(p) => p.ordinal,
            Entry::TimeSample { ordinal, .. }
            | Entry::SerialInput { ordinal, .. }
            | Entry::Interrupt { ordinal, .. }
            | Entry::Packet { ordinal, .. }
            | Entry::DiskCompletion { ordinal, .. }
            | Entry::HeldOutput { ordinal, .. }
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
            Entry::Point(_) => 11,
            Entry::HeldOutput { .. } => 12,
            Entry::BootSeed { .. } => 13,
        }
    }

    /// Human-readable name of a kind byte from [`Entry::kind`] (`"unknown"` for any
    /// other value), for statistics and error messages.
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
            11 => "point",
            12 => "held output",
            13 => "boot seed",
            _ => "unknown",
        }
    }
}
