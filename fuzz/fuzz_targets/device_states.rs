//! Every device of `ftvm-devices` restored from an arbitrary saved state, then driven by
//! arbitrary register accesses.
//!
//! Device state arrives from a checkpoint file or from the primary over the network, so
//! `from_state` must refuse garbage with an error, never a panic; a state it accepts must
//! be one the device can run from, whatever the guest then does. After the accesses the
//! device's own saved state must restore again and save identically (a backup restores
//! exactly what a primary saved), and survive both encodings.
//!
//! Input: byte 0 picks the device, byte 1 the encoding of the state (bit 0: bincode,
//! else JSON), a u16 LE length and that many bytes of state, then the accesses. A state
//! that does not decode or is refused leaves the device in its reset state, so the
//! accesses are exercised either way.

#![no_main]

use std::fmt::Debug;
use std::sync::Arc;

use ftvm_devices::{
    cmos, i8042, pic, pit, AbsentPorts, BusDevice, Cmos, IrqLine, IrqLines, Pic, Pit, Serial,
    SysCtl, I8042,
};
use ftvm_fuzz::{FuzzClock, Ops};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

/// Bounds what a bincode length prefix in a fuzzed state may allocate.
const STATE_LIMIT: usize = 1 << 20;

fn decode_state<S: DeserializeOwned>(bincode: bool, bytes: &[u8]) -> Option<S> {
    if bincode {
        let config = bincode::config::standard().with_limit::<STATE_LIMIT>();
        bincode::serde::decode_from_slice(bytes, config)
            .ok()
            .map(|(s, _)| s)
    } else {
        serde_json::from_slice(bytes).ok()
    }
}

/// Both encodings give back the state they were given.
fn check_encodings<S: Serialize + DeserializeOwned + PartialEq + Debug>(s: &S) {
    let json = serde_json::to_vec(s).expect("state encodes as JSON");
    assert_eq!(
        &serde_json::from_slice::<S>(&json).expect("JSON decodes"),
        s
    );
    let config = bincode::config::standard();
    let bin = bincode::serde::encode_to_vec(s, config).expect("state encodes as bincode");
    let (back, _): (S, usize) =
        bincode::serde::decode_from_slice(&bin, config).expect("bincode decodes");
    assert_eq!(&back, s);
}

/// Register accesses and clock steps from the input. `extra` runs the device's own
/// entry points besides the bus (interrupt polling, acknowledges, input), which the VMM
/// calls between exits.
fn drive<D: BusDevice>(
    dev: &mut D,
    bases: &[u64],
    span: u64,
    clock: &FuzzClock,
    ops: &mut Ops<'_>,
    mut extra: impl FnMut(&mut D, u8, &mut Ops<'_>),
) {
    // Bounded so that a long input cannot make one run slow.
    for _ in 0..4096 {
        if ops.is_empty() {
            break;
        }
        let op = ops.u8();
        let width = [1usize, 2, 4, 8][usize::from(op >> 2 & 3)];
        match op & 3 {
            0 | 1 => {
                let base = bases[usize::from(ops.u8()) % bases.len()];
                // A little beyond the range too: the bus hands devices what it routes.
                let offset = u64::from(ops.u8()) % (span + 2);
                if op & 1 == 0 {
                    let value = ops.u64().to_le_bytes();
                    dev.write(base, offset, &value[..width]);
                } else {
                    let mut buf = [0u8; 8];
                    dev.read(base, offset, &mut buf[..width]);
                }
            }
            // Time moves on: up to ~2 s per step, as between two exits of a halted guest.
            2 => clock.advance(u64::from(ops.u16()) << (op >> 4)),
            _ => extra(dev, op >> 2, ops),
        }
    }
}

fn irq(lines: &Arc<IrqLines>, n: u8) -> IrqLine {
    IrqLine::new(lines.clone(), n)
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    let device = ops.u8() % 7;
    let bincode = ops.u8() & 1 == 1;
    let len = usize::from(ops.u16());
    let state = ops.bytes(len);
    let clock = FuzzClock::new();
    // The machine's virtual time when the state is restored: anything up to ~36 years.
    clock.advance(ops.u64() % (1 << 60));
    let lines = IrqLines::new();
    let ops = &mut ops;
    match device {
        0 => {
            let mut d = decode_state(bincode, state)
                .and_then(|s| Pic::from_state(s).ok())
                .unwrap_or_default();
            let bases = [pic::MASTER_BASE, pic::SLAVE_BASE, pic::ELCR_BASE];
            drive(&mut d, &bases, 2, &clock, ops, |d, op, ops| match op % 4 {
                0 => d.raise_irq(ops.u8()),
                1 => d.set_irq_level(ops.u8(), op & 4 != 0),
                2 => {
                    let _ = d.acknowledge();
                }
                _ => {
                    let _ = d.inta();
                }
            });
            let s = d.state();
            let again = Pic::from_state(s.clone()).expect("PIC refuses its own state");
            assert_eq!(again.state(), s);
            check_encodings(&s);
            // Giving back any vector keeps the state restorable.
            let mut given = s.clone();
            given.give_back(ops.u8());
            Pic::from_state(given).expect("PIC refuses a state after give_back");
        }
        1 => {
            let c: Arc<FuzzClock> = clock.clone();
            let mut d = decode_state(bincode, state)
                .and_then(|s| Pit::from_state(s, c.clone()).ok())
                .unwrap_or_else(|| Pit::new(c.clone()));
            let bases = [pit::PIT_BASE, pit::PORT_61];
            drive(&mut d, &bases, 4, &clock, ops, |d, _, _| {
                let _ = d.poll_irq0();
                let _ = d.next_irq0_deadline_ns();
            });
            let s = d.state();
            let again = Pit::from_state(s.clone(), c).expect("PIT refuses its own state");
            assert_eq!(again.state(), s);
            check_encodings(&s);
        }
        2 => {
            let c: Arc<FuzzClock> = clock.clone();
            let restored =
                decode_state(bincode, state).and_then(|s| Cmos::from_state(s, c.clone()).ok());
            let mut d = restored
                .unwrap_or_else(|| Cmos::new(c.clone(), 1_700_000_000, 64 << 20))
                .with_irq(irq(&lines, 8));
            drive(&mut d, &[cmos::CMOS_BASE], 2, &clock, ops, |d, _, _| {
                let _ = d.poll_irq();
                let _ = d.next_irq_deadline_ns();
            });
            let s = d.state();
            let again = Cmos::from_state(s.clone(), c).expect("CMOS refuses its own state");
            assert_eq!(again.state(), s);
            check_encodings(&s);
        }
        3 => {
            let restored = decode_state(bincode, state)
                .and_then(|s| Serial::from_state(s, irq(&lines, 4), std::io::sink()).ok());
            let mut d = restored.unwrap_or_else(|| Serial::new(irq(&lines, 4), std::io::sink()));
            drive(&mut d, &[0x3f8], 8, &clock, ops, |d, op, ops| {
                let n = usize::from(op % 64);
                let taken = d.enqueue_input(ops.bytes(n));
                assert!(taken <= n);
                let _ = d.fifo_free();
            });
            let s = d.state();
            let again = Serial::from_state(s.clone(), irq(&lines, 4), std::io::sink())
                .expect("serial refuses its own state");
            assert_eq!(again.state(), s);
            check_encodings(&s);
        }
        4 => {
            let mut d = decode_state(bincode, state)
                .and_then(|s| I8042::from_state(s).ok())
                .unwrap_or_default();
            let bases = [i8042::DATA_PORT, i8042::COMMAND_PORT];
            drive(&mut d, &bases, 1, &clock, ops, |d, _, _| {
                let _ = d.take_reset_request();
            });
            let s = d.state();
            let again = I8042::from_state(s.clone()).expect("i8042 refuses its own state");
            assert_eq!(again.state(), s);
            check_encodings(&s);
        }
        5 => {
            let mut d = decode_state(bincode, state)
                .and_then(|s| SysCtl::from_state(s).ok())
                .unwrap_or_else(|| SysCtl::new(64));
            drive(&mut d, &[0], 0x1000, &clock, ops, |d, _, _| {
                let _ = d.take_poweroff();
            });
            let s = d.state();
            let again = SysCtl::from_state(s.clone()).expect("sysctl refuses its own state");
            assert_eq!(again.state(), s);
            check_encodings(&s);
        }
        _ => {
            let mut d = decode_state(bincode, state)
                .and_then(|s| AbsentPorts::from_state(s).ok())
                .unwrap_or_default();
            let bases: Vec<u64> = ftvm_devices::ABSENT_PORT_RANGES
                .iter()
                .map(|r| r.0)
                .collect();
            drive(&mut d, &bases, 8, &clock, ops, |_, _, _| {});
            let s = d.state();
            let again = AbsentPorts::from_state(s.clone()).expect("absent refuses its own state");
            assert_eq!(again.state(), s);
            check_encodings(&s);
        }
    }
    // Interrupts raised go to ISA lines only.
    let _ = lines.take();
});
