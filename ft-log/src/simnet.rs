//! A simulated logging channel (tests only): a scripted primary streams a state transfer and
//! a live log to a backup through a network that re-chunks, delays, drops, swaps, cuts and
//! corrupts bytes; the backup decodes, "replays" (checks every log entry in order) and acks,
//! and the primary's [`OutputGate`] releases console output on those acks.
//!
//! Everything is deterministic: one xorshift PRNG per seed, simulated time.
//!
//! What is checked, for every seed:
//! - the channel decoder yields exactly the messages an independent reference parse of the
//!   delivered bytes says are intact (each byte-identical to a frame that was sent), and
//!   reports an error (from `next_message`, or `finish` at end of stream) for any damage;
//! - with no fault it yields every message and `finish` is clean; a cut or a corruption
//!   yields a prefix of what was sent; a cut mid-frame is `Truncated`; corruption is
//!   always reported;
//! - the primary releases only console bytes whose exit ordinal the backup has decoded and
//!   verified, in order, at contiguous offsets, each once; with no fault, all of them.

use std::collections::HashSet;

use crate::channel::{
    encode_channel_header, encode_message, ChannelError, MessageDecoder, ToBackup, ToPrimary,
    CHANNEL_HEADER_LEN, MESSAGE_HEADER_LEN,
};
use crate::codec::{encode_entry, encode_header, Decoder};
use crate::entry::{Delta, Digest, Entry, ExitKind, ExitRecord, Page};
use crate::liveness::Liveness;
use crate::output::{OutputGate, Released};

/// xorshift64*: tiny, deterministic, good enough to pick chunk sizes and faults.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        let mut r = Rng((seed ^ 0xD1B5_4A32_D192_ED03).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for _ in 0..4 {
            r.next();
        }
        r
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in 0..n (0 for n = 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// In lo..=hi.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability num/den.
    pub(crate) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Between lo and hi (inclusive) random bytes.
    pub(crate) fn bytes_between(&mut self, lo: u64, hi: u64) -> Vec<u8> {
        let n = self.range(lo, hi) as usize;
        self.bytes(n)
    }
}

/// What the scripted primary does, in order.
enum Action {
    /// The guest wrote console bytes at this exit.
    Hold { ordinal: u64, bytes: Vec<u8> },
    /// Send the message with this index in `Script::messages`.
    Send(usize),
}

struct Script {
    actions: Vec<Action>,
    messages: Vec<ToBackup>,
    /// Encoded frame of each message.
    frames: Vec<Vec<u8>>,
    /// The log, entry by entry, as the backup must replay it.
    entries: Vec<Entry>,
    exits: u64,
    /// The console stream: each byte with the exit that produced it.
    console: Vec<(u64, u8)>,
    console_start: u64,
}

impl Script {
    fn new(rng: &mut Rng) -> Self {
        let mut s = Script {
            actions: Vec::new(),
            messages: Vec::new(),
            frames: Vec::new(),
            entries: Vec::new(),
            exits: rng.range(20, 120),
            console: Vec::new(),
            console_start: rng.below(1 << 20),
        };
        s.send(ToBackup::Hello {
            vm_name: "kv".into(),
            epoch: rng.below(10),
            mem_mib: 64,
            console_offset: s.console_start,
        });
        for _ in 0..rng.range(1, 3) {
            let pages: Vec<Page> = (0..rng.range(0, 2))
                .map(|_| Page {
                    gpa: rng.below(1 << 14) << 12,
                    data: if rng.chance(1, 3) {
                        vec![0; 4096]
                    } else {
                        rng.bytes(4096)
                    },
                })
                .collect();
            s.send(ToBackup::Pages(crate::pages::PageSet::Raw(pages)));
        }
        s.send(ToBackup::Machine {
            ordinal: 0,
            state: rng.bytes_between(50, 400),
        });

        let mut log = encode_header();
        let add = |s: &mut Script, log: &mut Vec<u8>, e: Entry| {
            log.extend(encode_entry(&e));
            s.entries.push(e);
        };
        add(
            &mut s,
            &mut log,
            Entry::Start {
                wall_clock_unix_secs: 1_700_000_000,
            },
        );
        let kinds = [
            ExitKind::PioIn,
            ExitKind::PioOut,
            ExitKind::MmioRead,
            ExitKind::MmioWrite,
            ExitKind::Hlt,
            ExitKind::Repaired,
        ];
        for k in 1..=s.exits {
            let exit = ExitRecord {
                ordinal: k,
                time_ns: k * 1000 + rng.below(1000),
                kind: kinds[rng.below(kinds.len() as u64) as usize],
                rip: rng.next() & 0xffff_ffff,
                addr: rng.below(0x1_0000),
                size: [1, 2, 4][rng.below(3) as usize],
                value: rng.next(),
            };
            add(&mut s, &mut log, Entry::Exit(exit));
            if rng.chance(1, 4) {
                let bytes = rng.bytes_between(1, 8);
                add(&mut s, &mut log, Entry::SerialInput { ordinal: k, bytes });
            }
            if rng.chance(1, 5) {
                let vector = 0x20 + rng.below(16) as u8;
                add(&mut s, &mut log, Entry::Interrupt { ordinal: k, vector });
            }
            if rng.chance(1, 10) {
                let time_ns = k * 1000 + 999;
                add(
                    &mut s,
                    &mut log,
                    Entry::TimeSample {
                        ordinal: k,
                        time_ns,
                    },
                );
            }
            if rng.chance(1, 40) {
                let delta = Delta {
                    ordinal: k,
                    time_ns: k * 1000,
                    full: false,
                    state_encoding: Default::default(),
                    vcpu: rng.bytes(40),
                    devices: rng.bytes(20),
                    pages: crate::pages::PageSet::Raw(vec![Page {
                        gpa: 0x1000,
                        data: rng.bytes(4096),
                    }]),
                };
                add(&mut s, &mut log, Entry::Delta(Box::new(delta)));
            }
            if k == s.exits {
                let digest = Digest {
                    memory_crc32: 1,
                    vcpu_crc32: 2,
                    devices_crc32: 3,
                };
                let reason = "power off".into();
                add(
                    &mut s,
                    &mut log,
                    Entry::Shutdown {
                        ordinal: k,
                        reason,
                        digest,
                    },
                );
            }
            // The console output of exit k happens at the exit, before its log goes out.
            if rng.chance(1, 2) {
                let bytes = rng.bytes_between(1, 6);
                s.console.extend(bytes.iter().map(|&b| (k, b)));
                s.actions.push(Action::Hold { ordinal: k, bytes });
            }
            if rng.chance(1, 4) || k == s.exits {
                // Log chunks are cut anywhere, not at log frame boundaries.
                let mut rest = &std::mem::take(&mut log)[..];
                while !rest.is_empty() {
                    let n = (rng.range(1, 400) as usize).min(rest.len());
                    s.send(ToBackup::Log(rest[..n].to_vec()));
                    rest = &rest[n..];
                }
            }
            if rng.chance(1, 8) {
                s.send(ToBackup::Heartbeat);
            }
        }
        s
    }

    fn send(&mut self, m: ToBackup) {
        self.frames.push(encode_message(&m));
        self.messages.push(m);
        self.actions.push(Action::Send(self.messages.len() - 1));
    }

    /// The primary's byte stream.
    fn wire(&self) -> Vec<u8> {
        let mut w = encode_channel_header();
        for f in &self.frames {
            w.extend(f);
        }
        w
    }

    /// Stream offset where each frame ends.
    fn frame_ends(&self) -> Vec<usize> {
        let mut b = CHANNEL_HEADER_LEN;
        self.frames
            .iter()
            .map(|f| {
                b += f.len();
                b
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Only re-chunking (split/merge at random boundaries).
    None,
    /// Long stalls, then big merged chunks.
    Delay,
    /// A piece of the stream lost.
    Drop,
    /// Two adjacent pieces delivered in the wrong order.
    Swap,
    /// The stream ends early.
    Cut,
    /// 1 to 3 flipped bits.
    Flip,
    /// Exactly one whole message lost (a sender bug dropping a queued message): invisible
    /// to the channel format, to be caught by the replay.
    DropWhole,
}

const FAULTS: [Fault; 7] = [
    Fault::None,
    Fault::Delay,
    Fault::Drop,
    Fault::Swap,
    Fault::Cut,
    Fault::Flip,
    Fault::DropWhole,
];

/// The bytes the network delivers: `data[i]` came from wire offset `src[i]`.
struct Delivered {
    data: Vec<u8>,
    src: Vec<usize>,
    /// Delivered offset of the first byte that differs from the wire at that source offset
    /// or comes from a non-contiguous source (the first damage), if any.
    first_damage: Option<usize>,
}

/// `boundaries`: the end of the header, then the end of every frame.
fn deliver(wire: &[u8], fault: Fault, boundaries: &[usize], rng: &mut Rng) -> Delivered {
    let n = wire.len();
    let piece = |rng: &mut Rng| rng.range(1, 300) as usize;
    let segments: Vec<(usize, usize)> = match fault {
        Fault::None | Fault::Delay | Fault::Flip => vec![(0, n)],
        Fault::Drop => {
            let a = rng.below(n as u64) as usize;
            let b = (a + piece(rng)).min(n);
            vec![(0, a), (b, n)]
        }
        Fault::Swap => {
            let a = rng.below(n as u64) as usize;
            let b = (a + piece(rng)).min(n);
            let c = (b + piece(rng)).min(n);
            vec![(0, a), (b, c), (a, b), (c, n)]
        }
        Fault::Cut => {
            // Half the time exactly at a message boundary.
            let c = if rng.chance(1, 2) {
                boundaries[rng.below(boundaries.len() as u64) as usize]
            } else {
                rng.below(n as u64 + 1) as usize
            };
            vec![(0, c)]
        }
        Fault::DropWhole => {
            let j = rng.below(boundaries.len() as u64 - 1) as usize;
            vec![(0, boundaries[j]), (boundaries[j + 1], n)]
        }
    };
    let mut d = Delivered {
        data: Vec::with_capacity(n),
        src: Vec::with_capacity(n),
        first_damage: None,
    };
    for (a, b) in segments {
        if a < b && d.first_damage.is_none() && a != d.src.len() {
            d.first_damage = Some(d.src.len());
        }
        d.data.extend_from_slice(&wire[a..b]);
        d.src.extend(a..b);
    }
    if fault == Fault::Flip {
        // Distinct bytes, so no flip undoes another.
        let mut at = rng.below(n as u64) as usize;
        let mut flipped = Vec::new();
        for _ in 0..rng.range(1, 3) {
            if !flipped.contains(&at) {
                d.data[at] ^= 1 << rng.below(8);
                flipped.push(at);
            }
            // Sometimes a burst, sometimes far apart.
            at = if rng.chance(1, 2) {
                (at + rng.range(1, 40) as usize).min(n - 1)
            } else {
                rng.below(n as u64) as usize
            };
        }
        d.first_damage = flipped.iter().copied().min();
    }
    d
}

/// How a reference parse of the delivered bytes ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Everything was whole frames.
    Clean,
    /// What follows the last whole frame is the start of a sent frame (or of the header).
    Cut,
    /// What follows is not the start of anything that was sent.
    Damaged,
}

/// The reference parse: frames byte-identical to a sent one, in delivered order, up to the
/// first thing that is not. Independent of `MessageDecoder`: it knows what was sent.
struct Reference {
    messages: Vec<usize>,
    /// Delivered offset where the parse stopped.
    pos: usize,
    end: End,
}

fn reference(data: &[u8], script: &Script) -> Reference {
    let header = encode_channel_header();
    let sent: HashSet<&[u8]> = script.frames.iter().map(|f| &f[..]).collect();
    let index_of = |f: &[u8]| script.frames.iter().position(|g| g[..] == *f);
    let starts_a_frame = |rest: &[u8]| {
        script
            .frames
            .iter()
            .any(|f| f.len() > rest.len() && f.starts_with(rest))
    };
    let mut r = Reference {
        messages: Vec::new(),
        pos: 0,
        end: End::Clean,
    };
    if data.len() < CHANNEL_HEADER_LEN {
        r.end = if header.starts_with(data) {
            End::Cut
        } else {
            End::Damaged
        };
        return r;
    }
    if data[..CHANNEL_HEADER_LEN] != header[..] {
        r.end = End::Damaged;
        return r;
    }
    r.pos = CHANNEL_HEADER_LEN;
    while r.pos < data.len() {
        let rest = &data[r.pos..];
        let whole = rest.len() >= 4 && {
            let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let end = MESSAGE_HEADER_LEN.saturating_add(len);
            end <= rest.len() && sent.contains(&rest[..end])
        };
        if !whole {
            r.end = if starts_a_frame(rest) {
                End::Cut
            } else {
                End::Damaged
            };
            return r;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let end = MESSAGE_HEADER_LEN + len;
        r.messages.extend(index_of(&rest[..end]));
        r.pos += end;
    }
    r
}

/// The backup: decodes the channel, feeds the log to ft-log's decoder, and "replays" by
/// checking each entry against the one the primary logged (a real replayer checks its own
/// guest's exits; the effect is the same: an entry out of sequence is a divergence and
/// nothing from it on is acknowledged).
struct Backup {
    channel: MessageDecoder<ToBackup>,
    log: Decoder,
    messages: Vec<ToBackup>,
    channel_error: Option<ChannelError>,
    log_failed: bool,
    diverged: bool,
    /// Entries replayed and verified, in order.
    replayed: usize,
    /// Highest exit ordinal replayed and verified.
    verified: u64,
    acked: u64,
    liveness: Liveness,
    /// Bytes for the primary.
    out: Vec<u8>,
}

impl Backup {
    fn new(now: u64, timeout: u64) -> Self {
        let mut out = encode_channel_header();
        out.extend(encode_message(&ToPrimary::Hello {
            vm_name: "kv".into(),
        }));
        Backup {
            channel: MessageDecoder::new(),
            log: Decoder::new(),
            messages: Vec::new(),
            channel_error: None,
            log_failed: false,
            diverged: false,
            replayed: 0,
            verified: 0,
            acked: 0,
            liveness: Liveness::new(timeout, now),
            out,
        }
    }

    fn receive(&mut self, bytes: &[u8], script: &Script, now: u64) {
        if self.channel_error.is_some() {
            return; // the connection is gone
        }
        self.channel.push(bytes);
        loop {
            match self.channel.next_message() {
                Ok(None) => break,
                Err(e) => {
                    self.channel_error = Some(e);
                    break;
                }
                Ok(Some(m)) => {
                    self.liveness.heard(now);
                    if let ToBackup::Log(b) = &m {
                        self.replay(b, script);
                    }
                    self.messages.push(m);
                }
            }
        }
        if self.verified > self.acked {
            self.acked = self.verified;
            self.out.extend(encode_message(&ToPrimary::Ack {
                ordinal: self.verified,
            }));
        }
    }

    fn replay(&mut self, bytes: &[u8], script: &Script) {
        if self.log_failed || self.diverged {
            return;
        }
        self.log.push(bytes);
        loop {
            match self.log.next_entry() {
                Ok(None) => return,
                Err(_) => {
                    self.log_failed = true;
                    return;
                }
                Ok(Some(e)) => {
                    if script.entries.get(self.replayed) != Some(&e) {
                        self.diverged = true;
                        return;
                    }
                    self.replayed += 1;
                    if let Entry::Exit(x) = e {
                        assert_eq!(x.ordinal, self.verified + 1);
                        self.verified = x.ordinal;
                    }
                }
            }
        }
    }
}

/// The primary's side of the output rule, with the checks on every release.
struct Console {
    start: u64,
    out: Vec<u8>,
}

impl Console {
    /// `limit`: the highest ordinal that may be released (the backup's verified ordinal),
    /// `None` when the primary is alone.
    fn take(&mut self, rs: Vec<Released>, script: &Script, limit: Option<u64>, seed: u64) {
        for r in rs {
            assert_eq!(
                r.offset,
                self.start + self.out.len() as u64,
                "seed {seed}: gap or overlap"
            );
            assert!(!r.bytes.is_empty(), "seed {seed}");
            for (i, &b) in r.bytes.iter().enumerate() {
                let (ordinal, want) = script.console[self.out.len() + i];
                assert_eq!(b, want, "seed {seed}: wrong byte");
                if let Some(limit) = limit {
                    assert!(
                        ordinal <= limit,
                        "seed {seed}: released ordinal {ordinal}, backup verified {limit}"
                    );
                }
            }
            self.out.extend(&r.bytes);
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    runs: [u64; 7],
    detected: [u64; 7],
    /// Whole frames lost or reordered: invisible to the channel format.
    undetectable: [u64; 7],
    /// Faults that changed no byte.
    harmless: [u64; 7],
}

fn run(seed: u64, tally: &mut Tally) {
    let mut rng = Rng::new(seed);
    let fault = FAULTS[(seed % FAULTS.len() as u64) as usize];
    let script = Script::new(&mut rng);
    let wire = script.wire();
    let ends = script.frame_ends();
    let mut boundaries = vec![CHANNEL_HEADER_LEN];
    boundaries.extend(&ends);
    let d = deliver(&wire, fault, &boundaries, &mut rng);
    let reference = reference(&d.data, &script);

    // The network may hand over delivered byte i only once the primary has written the
    // wire byte it came from (and every earlier one: a swap waits for its later piece).
    let mut ready = Vec::with_capacity(d.src.len());
    let mut m = 0;
    for &s in &d.src {
        m = m.max(s + 1);
        ready.push(m);
    }
    let (p_deliver, max_chunk) = match fault {
        Fault::Delay => ((1, 12), 20_000),
        _ => (
            (rng.range(1, 4), 4),
            [1, 16, 300, 5000][rng.below(4) as usize],
        ),
    };
    // A back channel that dies part-way: acks stop, output stays held.
    let back_cut = rng.chance(1, 6).then(|| rng.below(200) as usize);
    let timeout = 1_000_000;

    let mut now = 0;
    let mut gate = OutputGate::new(script.console_start);
    let mut console = Console {
        start: script.console_start,
        out: Vec::new(),
    };
    let mut backup = Backup::new(now, timeout);
    let mut acks = MessageDecoder::<ToPrimary>::new();
    let mut primary_heard = Liveness::new(timeout, now);
    let mut primary_got_hello = false;
    let mut next_action = 0;
    let mut written = 0; // wire bytes the primary has written
    let mut delivered = 0; // of d.data
    let mut back_delivered = 0; // of backup.out
    for _tick in 0..1_000_000 {
        now += rng.range(1, 20_000);
        // The primary runs the guest and writes.
        if written == 0 {
            written = CHANNEL_HEADER_LEN;
        }
        for _ in 0..rng.below(4) {
            match script.actions.get(next_action) {
                Some(Action::Hold { ordinal, bytes }) => {
                    let r = gate.hold(*ordinal, bytes, now);
                    console.take(
                        r.into_iter().collect(),
                        &script,
                        Some(backup.verified),
                        seed,
                    );
                }
                Some(Action::Send(i)) => written += script.frames[*i].len(),
                None => {}
            }
            next_action = (next_action + 1).min(script.actions.len());
        }
        // Primary -> backup.
        if rng.chance(p_deliver.0, p_deliver.1) {
            let limit = ready.partition_point(|&r| r <= written);
            let upto = (delivered + rng.range(1, max_chunk) as usize).min(limit);
            if upto > delivered {
                backup.receive(&d.data[delivered..upto], &script, now);
                delivered = upto;
            }
        }
        // Backup -> primary, clean but re-chunked (and maybe cut).
        let back_limit = back_cut.map_or(backup.out.len(), |c| c.min(backup.out.len()));
        if rng.chance(1, 2) && back_delivered < back_limit {
            let upto = (back_delivered + rng.range(1, 64) as usize).min(back_limit);
            acks.push(&backup.out[back_delivered..upto]);
            back_delivered = upto;
            while let Some(m) = acks.next_message().expect("clean back channel") {
                primary_heard.heard(now);
                match m {
                    ToPrimary::Hello { vm_name } => {
                        assert_eq!(vm_name, "kv");
                        primary_got_hello = true;
                    }
                    ToPrimary::Ack { ordinal } => {
                        assert!(primary_got_hello, "seed {seed}: ack before hello");
                        assert!(ordinal <= backup.verified);
                        let rs = gate.ack(ordinal, now);
                        console.take(rs, &script, Some(backup.verified), seed);
                    }
                    ToPrimary::Heartbeat | ToPrimary::Resync => {}
                }
            }
        }
        // A stale ack (a duplicate, a reconnect) never releases anything.
        if rng.chance(1, 20) {
            let stale = rng.below(gate.acked() + 1);
            assert_eq!(gate.ack(stale, now), vec![], "seed {seed}");
        }
        let idle = next_action == script.actions.len()
            && delivered == d.data.len()
            && back_delivered == back_limit;
        if idle {
            break;
        }
    }
    assert_eq!(
        next_action,
        script.actions.len(),
        "seed {seed}: simulation stalled"
    );
    assert_eq!(delivered, d.data.len(), "seed {seed}: simulation stalled");

    // The stream has ended. The backup's decoder against the reference parse.
    let finish = backup.channel.finish();
    let want: Vec<ToBackup> = reference
        .messages
        .iter()
        .map(|&i| script.messages[i].clone())
        .collect();
    assert_eq!(
        backup.messages, want,
        "seed {seed} {fault:?}: decoder and reference disagree"
    );
    assert_eq!(backup.channel.frames(), want.len() as u64, "seed {seed}");
    if reference.pos >= CHANNEL_HEADER_LEN {
        assert_eq!(
            backup.channel.consumed(),
            reference.pos as u64,
            "seed {seed}"
        );
    }
    match reference.end {
        End::Clean => {
            assert_eq!(backup.channel_error, None, "seed {seed}");
            assert_eq!(finish, Ok(()), "seed {seed}");
        }
        End::Cut => {
            assert_eq!(backup.channel_error, None, "seed {seed}");
            if reference.pos < CHANNEL_HEADER_LEN {
                assert_eq!(
                    finish,
                    Err(ChannelError::TruncatedHeader { have: d.data.len() })
                );
            } else {
                assert!(
                    matches!(finish, Err(ChannelError::Truncated { frame, offset, .. })
                        if frame == want.len() as u64 && offset == reference.pos as u64),
                    "seed {seed}: {finish:?}"
                );
            }
        }
        End::Damaged => match &backup.channel_error {
            Some(ChannelError::BadMagic | ChannelError::Version { .. }) => {
                assert!(reference.pos < CHANNEL_HEADER_LEN, "seed {seed}");
            }
            Some(
                ChannelError::TooLarge { frame, offset, .. }
                | ChannelError::Checksum { frame, offset, .. }
                | ChannelError::Payload { frame, offset, .. },
            ) => {
                assert_eq!(*frame, want.len() as u64, "seed {seed}");
                assert_eq!(*offset, reference.pos as u64, "seed {seed}");
            }
            Some(e) => panic!("seed {seed}: {e:?} from next_message"),
            None => assert!(
                matches!(
                    finish,
                    Err(ChannelError::Truncated { .. } | ChannelError::TruncatedHeader { .. })
                ),
                "seed {seed}: damage unreported: {finish:?}"
            ),
        },
    }
    let reported = backup.channel_error.is_some() || finish.is_err();

    // What each fault promises, in terms of what was sent.
    let fi = FAULTS.iter().position(|&f| f == fault).unwrap_or(0);
    tally.runs[fi] += 1;
    let whole_before = |at: usize| ends.iter().take_while(|&&e| e <= at).count();
    match fault {
        Fault::None | Fault::Delay => {
            assert_eq!(backup.messages, script.messages, "seed {seed}");
            assert!(!reported, "seed {seed}");
            assert!(!backup.log_failed && !backup.diverged, "seed {seed}");
            assert_eq!(backup.log.finish(), Ok(()), "seed {seed}");
            assert_eq!(backup.replayed, script.entries.len(), "seed {seed}");
            assert_eq!(backup.verified, script.exits, "seed {seed}");
        }
        Fault::Cut => {
            let n = backup.messages.len();
            assert_eq!(backup.messages[..], script.messages[..n], "seed {seed}");
            assert_eq!(n, whole_before(d.data.len()), "seed {seed}");
            assert_eq!(
                reported,
                !boundaries.contains(&d.data.len()),
                "seed {seed}: {finish:?}"
            );
            if reported {
                tally.detected[fi] += 1;
            }
        }
        Fault::Flip => {
            let at = d.first_damage.expect("a flip");
            assert_eq!(
                backup.messages[..],
                script.messages[..whole_before(at)],
                "seed {seed}"
            );
            assert!(reported, "seed {seed}: corruption unreported");
            tally.detected[fi] += 1;
        }
        Fault::DropWhole => {
            let j = d
                .first_damage
                .map_or(script.messages.len() - 1, whole_before);
            let mut want = script.messages.clone();
            let lost = want.remove(j);
            assert_eq!(backup.messages, want, "seed {seed}");
            assert!(!reported, "seed {seed}");
            tally.undetectable[fi] += 1;
            // A lost piece of the log is a gap the replay cannot get past.
            if matches!(&lost, ToBackup::Log(b) if !b.is_empty()) {
                assert!(
                    backup.replayed < script.entries.len(),
                    "seed {seed}: log gap unnoticed"
                );
                tally.detected[fi] += 1;
            }
        }
        Fault::Drop | Fault::Swap => {
            // Up to the first splice, exactly what was sent; after it, only messages
            // byte-identical to sent ones (the reference check above). A splice of whole
            // frames cannot be seen by a format without sequence numbers; the log inside
            // catches it for Log messages (the replay check below).
            let k = whole_before(d.first_damage.unwrap_or(d.data.len()));
            assert_eq!(backup.messages[..k], script.messages[..k], "seed {seed}");
            if reported {
                tally.detected[fi] += 1;
            } else if d.data[..] == wire[..d.data.len()] {
                // Pieces of equal content swapped (inside a zero page): no damage at all.
                tally.harmless[fi] += 1;
            } else if d.first_damage.is_some() {
                assert_eq!(reference.end, End::Clean, "seed {seed}");
                tally.undetectable[fi] += 1;
            }
        }
    }
    // Whatever happened, the replay never verified past what arrived intact and in order.
    assert!(backup.verified <= script.exits);

    // Output rule: nothing released beyond what the backup verified (checked at each
    // release), and, with a healthy channel, everything released.
    assert_eq!(
        console.out.len() as u64 + gate.held_bytes(),
        script.console.len() as u64
    );
    if matches!(fault, Fault::None | Fault::Delay) && back_cut.is_none() {
        assert_eq!(gate.held_bytes(), 0, "seed {seed}");
        assert_eq!(console.out.len(), script.console.len(), "seed {seed}");
        assert_eq!(gate.acked(), script.exits, "seed {seed}");
    }
    assert!(gate.acked() <= backup.verified, "seed {seed}");

    // Silence from here on: both sides' failure detectors fire after the timeout.
    assert!(!backup
        .liveness
        .expired(backup.liveness.last_heard_ns() + timeout));
    assert!(backup.liveness.expired(now + timeout + 1));
    assert!(primary_heard.expired(now + timeout + 1));

    // Failover: the primary wins the test-and-set (goes alone and releases the rest) or
    // loses (drops what it held, never emitting it).
    now += timeout + 1;
    if rng.chance(1, 2) {
        let rs = gate.set_alone(true, now);
        console.take(rs, &script, None, seed);
        assert_eq!(console.out.len(), script.console.len(), "seed {seed}");
        let tail = rng.bytes(3);
        let r = gate.hold(script.exits + 1, &tail, now);
        assert_eq!(r.map(|r| r.offset), Some(gate.offset() - 3));
    } else {
        let held = gate.held_bytes();
        assert_eq!(gate.discard(), held);
        assert_eq!(console.out.len() as u64 + held, script.console.len() as u64);
        assert_eq!(gate.set_alone(true, now), vec![]);
    }
    let stats = gate.stats();
    assert_eq!(stats.bytes_held, 0);
    assert_eq!(
        stats.bytes_released + stats.bytes_discarded,
        gate.offset() - script.console_start
    );
}

#[test]
fn simulated_network_hundreds_of_seeds() {
    let mut tally = Tally::default();
    for seed in 0..1400 {
        run(seed, &mut tally);
    }
    for (i, f) in FAULTS.iter().enumerate() {
        assert_eq!(tally.runs[i], 200, "{f:?}");
    }
    // Drops and swaps inside frames dominate; splices of whole frames are rare.
    for f in [Fault::Drop, Fault::Swap] {
        let i = f as usize;
        assert!(
            tally.detected[i] >= tally.runs[i] * 8 / 10,
            "{f:?}: only {} of {} detected ({} undetectable)",
            tally.detected[i],
            tally.runs[i],
            tally.undetectable[i]
        );
    }
    assert_eq!(tally.detected[Fault::Flip as usize], 200);
    eprintln!("simnet: {tally:?}");
}

#[test]
fn garbage_streams_never_panic_and_never_yield_messages() {
    // Random bytes behind a valid header, with and without a plausible frame header.
    let mut yielded = 0;
    for seed in 0..500 {
        let mut rng = Rng::new(seed + 10_000);
        let mut s = encode_channel_header();
        let body = rng.bytes_between(0, 2000);
        if rng.chance(1, 2) {
            s.extend_from_slice(&(body.len() as u32).to_le_bytes());
            s.extend_from_slice(&rng.next().to_le_bytes()[..4]);
        }
        s.extend(&body);
        let mut d = MessageDecoder::<ToBackup>::new();
        let mut off = 0;
        while off < s.len() {
            let n = (rng.range(1, 128) as usize).min(s.len() - off);
            d.push(&s[off..off + n]);
            off += n;
            match d.next_message() {
                Ok(Some(_)) => yielded += 1,
                Ok(None) => {}
                Err(_) => break,
            }
        }
        let _ = d.finish();
    }
    // A random frame passes its checksum with probability 2^-32.
    assert_eq!(yielded, 0);
}
