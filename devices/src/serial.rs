//! The 16550 UART of the serial console: vm-superio's model, with a serde state, a
//! bounded input path and an output writer that may fail without taking the VM down.
//!
//! Two small wrappers sit around vm-superio's `Serial`:
//! - the output writer counts the bytes it could not write instead of failing (the guest
//!   must not notice a closed console), and warns once;
//! - the interrupt trigger can be muted, which is used only while restoring: vm-superio
//!   re-triggers pending interrupts when built from a state, but those edges were already
//!   delivered before the state was saved (the PIC state holds them), and raising them
//!   again would give the restored guest an interrupt the original never got.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;

use crate::{BusDevice, IrqLine, StateError};

/// vm-superio's receive FIFO size.
pub const FIFO_SIZE: usize = 64;
/// The interrupt enable bits a 16550 has.
const IER_VALID: u8 = 0x0f;
/// vm-superio's IIR values: no interrupt, THR empty, data available, or both pending.
const IIR_VALID: [u8; 4] = [0x01, 0x02, 0x04, 0x06];
/// LSR bits: data ready, and THR empty + transmitter idle (always set in this model: the
/// output writer takes bytes immediately).
const LSR_DATA_READY: u8 = 0x01;
const LSR_TX_IDLE: u8 = 0x60;

/// Saved state of [`Serial`]: vm-superio's `SerialState`, with serde.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SerialState {
    /// Divisor latch, low byte (DLL).
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte (DLM).
    pub baud_divisor_high: u8,
    /// Interrupt enable register (IER).
    pub interrupt_enable: u8,
    /// Interrupt identification register (IIR).
    pub interrupt_identification: u8,
    /// Line control register (LCR).
    pub line_control: u8,
    /// Line status register (LSR).
    pub line_status: u8,
    /// Modem control register (MCR).
    pub modem_control: u8,
    /// Modem status register (MSR).
    pub modem_status: u8,
    /// Scratch register (SCR).
    pub scratch: u8,
    /// Received bytes not yet read by the guest, oldest first.
    pub in_buffer: Vec<u8>,
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl TryFrom<SerialState> for vm_superio::serial::SerialState {
    type Error = StateError;

    /// Validates that the state is one vm-superio's model can be in.
    fn try_from(s: SerialState) -> Result<Self, StateError> {
        let err = |reason: String| Err(StateError::new("serial", reason));
        if s.in_buffer.len() > FIFO_SIZE {
            return err(format!(
                "in_buffer holds {} bytes, the FIFO {FIFO_SIZE}",
                s.in_buffer.len()
            ));
        }
        if s.interrupt_enable & !IER_VALID != 0 {
            return err(format!("interrupt_enable {:#x}", s.interrupt_enable));
        }
        if !IIR_VALID.contains(&s.interrupt_identification) {
            return err(format!(
                "interrupt_identification {:#x}",
                s.interrupt_identification
            ));
        }
        let expected_lsr = if s.in_buffer.is_empty() {
            LSR_TX_IDLE
        } else {
            LSR_TX_IDLE | LSR_DATA_READY
        };
        if s.line_status != expected_lsr {
            return err(format!(
                "line_status {:#x} with {} bytes in in_buffer",
                s.line_status,
                s.in_buffer.len()
            ));
        }
        Ok(Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        })
    }
}

/// Counts bytes its writer could not take, so a closed console never stops the guest.
struct LossyWriter<W> {
    inner: W,
    lost: u64,
    warned: bool,
}

impl<W: Write> LossyWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            lost: 0,
            warned: false,
        }
    }

    fn warn_once(&mut self, error: &std::io::Error) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(%error, "serial console output failed; lost bytes are counted");
        }
    }
}

impl<W: Write> Write for LossyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Err(error) = self.inner.write_all(buf) {
            self.warn_once(&error);
            self.lost = self.lost.saturating_add(buf.len() as u64);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // A failing flush loses what a buffering writer held; how much is unknown.
        if let Err(error) = self.inner.flush() {
            self.warn_once(&error);
        }
        Ok(())
    }
}

/// The UART's interrupt line, muted while a restored device is being built.
struct SerialIrq {
    line: IrqLine,
    muted: AtomicBool,
}

impl vm_superio::Trigger for SerialIrq {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        if !self.muted.load(Ordering::Relaxed) {
            self.line.raise();
        }
        Ok(())
    }
}

/// The 16550 UART, registered over its 8 ports, writing what the guest sends to `W`.
pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<SerialIrq, NoEvents, LossyWriter<W>>,
}

impl<W: Write + Send> Serial<W> {
    /// A UART in its reset state, raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: IrqLine, out: W) -> Self {
        let irq = SerialIrq {
            line: irq,
            muted: AtomicBool::new(false),
        };
        Self {
            uart: vm_superio::Serial::new(irq, LossyWriter::new(out)),
        }
    }

    /// A UART restored from `state` (validated). Interrupts pending in the state are not
    /// raised again: they were raised before the state was saved.
    pub fn from_state(state: SerialState, irq: IrqLine, out: W) -> Result<Self, StateError> {
        let state = vm_superio::serial::SerialState::try_from(state)?;
        let irq = SerialIrq {
            line: irq,
            muted: AtomicBool::new(true),
        };
        let uart = vm_superio::Serial::from_state(&state, irq, NoEvents, LossyWriter::new(out))
            .map_err(|e| StateError::new("serial", format!("{e:?}")))?;
        uart.interrupt_evt().muted.store(false, Ordering::Relaxed);
        Ok(Self { uart })
    }

    /// Saves the state.
    pub fn state(&self) -> SerialState {
        self.uart.state().into()
    }

    /// Queue input bytes; returns how many the FIFO took (the rest must wait). Nothing is
    /// taken in loopback mode, where the UART only hears itself.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.fifo_free());
        if n == 0 {
            return 0;
        }
        // The only error is a full FIFO, ruled out above.
        self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or(0)
    }

    /// Free space in the receive FIFO.
    pub fn fifo_free(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// Output bytes the writer refused since this device was created.
    pub fn lost_output_bytes(&self) -> u64 {
        self.uart.writer().lost
    }
}

impl<W: Write + Send> BusDevice for Serial<W> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) if off < 8 => data[0] = self.uart.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (&[value], Ok(off)) = (data, u8::try_from(offset)) {
            if off < 8 {
                // Errors are from the trigger (infallible) or the writer (absorbed by
                // LossyWriter), so there is nothing left to handle.
                let _ = self.uart.write(off, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IrqLines;
    use std::sync::{Arc, Mutex};

    const COM1: u64 = 0x3f8;
    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const MCR: u64 = 4;
    const LSR: u64 = 5;
    const SCR: u64 = 7;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    fn serial() -> (Serial<Sink>, Arc<IrqLines>, Sink) {
        let lines = IrqLines::new();
        let sink = Sink::default();
        let s = Serial::new(IrqLine::new(lines.clone(), 4), sink.clone());
        (s, lines, sink)
    }

    fn reg(s: &mut Serial<impl Write + Send>, off: u64) -> u8 {
        let mut b = [0];
        s.read(COM1, off, &mut b);
        b[0]
    }

    fn out(s: &mut Serial<impl Write + Send>, off: u64, v: u8) {
        s.write(COM1, off, &[v]);
    }

    #[test]
    fn output_reaches_the_writer() {
        let (mut s, lines, sink) = serial();
        for b in b"hi" {
            out(&mut s, DATA, *b);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert_eq!(reg(&mut s, LSR), 0x60, "transmitter always ready");
        assert_eq!(lines.take(), 0, "THR interrupt not enabled");
    }

    #[test]
    fn thr_empty_interrupt_when_enabled() {
        let (mut s, lines, _sink) = serial();
        out(&mut s, IER, 0x02);
        assert_eq!(lines.take(), 1 << 4, "enabling with THR empty raises it");
        assert_eq!(reg(&mut s, IIR), 0xc2);
        out(&mut s, DATA, b'x');
        assert_eq!(lines.take(), 1 << 4);
        assert_eq!(reg(&mut s, IIR), 0xc2);
        assert_eq!(reg(&mut s, IIR), 0xc1, "reading IIR acknowledged it");
    }

    #[test]
    fn input_sets_data_ready_and_raises_the_irq() {
        let (mut s, lines, _sink) = serial();
        out(&mut s, IER, 0x01); // data available
        assert_eq!(lines.take(), 0);
        assert_eq!(reg(&mut s, LSR) & 1, 0);
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert_eq!(lines.take(), 1 << 4);
        assert_eq!(reg(&mut s, LSR) & 1, 1);
        assert_eq!(reg(&mut s, IIR), 0xc4);
        assert_eq!(reg(&mut s, DATA), b'a');
        assert_eq!(reg(&mut s, DATA), b'b');
        assert_eq!(reg(&mut s, LSR) & 1, 0);
        assert_eq!(s.fifo_free(), FIFO_SIZE);
    }

    #[test]
    fn full_fifo_takes_only_what_fits() {
        let (mut s, _lines, _sink) = serial();
        assert_eq!(s.enqueue_input(&[]), 0);
        assert_eq!(s.enqueue_input(&[b'x'; 100]), FIFO_SIZE);
        assert_eq!(s.enqueue_input(b"more"), 0);
        assert_eq!(s.fifo_free(), 0);
        reg(&mut s, DATA);
        assert_eq!(s.fifo_free(), 1);
        assert_eq!(s.enqueue_input(b"yz"), 1);
    }

    #[test]
    fn loopback_and_divisor_latch() {
        let (mut s, _lines, sink) = serial();
        out(&mut s, MCR, 0x10 | 0x08);
        out(&mut s, DATA, b'L');
        assert!(sink.0.lock().unwrap().is_empty(), "looped back, not sent");
        assert_eq!(s.enqueue_input(b"x"), 0, "no external input in loopback");
        assert_eq!(reg(&mut s, DATA), b'L');
        out(&mut s, LCR, 0x83);
        out(&mut s, DATA, 0x01);
        out(&mut s, IER, 0x00);
        assert_eq!([reg(&mut s, DATA), reg(&mut s, IER)], [0x01, 0x00]);
        out(&mut s, LCR, 0x03);
        out(&mut s, SCR, 0x5a);
        assert_eq!(reg(&mut s, SCR), 0x5a);
    }

    #[test]
    fn broken_output_is_counted_not_fatal() {
        let mut s = Serial::new(IrqLine::new(IrqLines::new(), 4), Broken);
        out(&mut s, DATA, b'x');
        out(&mut s, DATA, b'y');
        assert_eq!(s.lost_output_bytes(), 2);
        assert_eq!(reg(&mut s, LSR), 0x60);
    }

    #[test]
    fn state_round_trips_without_raising_the_irq_again() {
        let (mut s, lines, _sink) = serial();
        out(&mut s, SCR, 0x42);
        out(&mut s, IER, 0x03); // data available and THR empty: IIR 0x02, then 0x06
        s.enqueue_input(b"qr");
        assert_eq!(s.state().interrupt_identification, 0x06);
        lines.take();
        let json = serde_json::to_string(&s.state()).unwrap();
        let restored_lines = IrqLines::new();
        let mut r = Serial::from_state(
            serde_json::from_str(&json).unwrap(),
            IrqLine::new(restored_lines.clone(), 4),
            Sink::default(),
        )
        .unwrap();
        assert_eq!(restored_lines.take(), 0, "nothing raised by the restore");
        assert_eq!(r.state(), s.state());
        for off in [SCR, IIR, IIR, DATA, LSR, DATA, LSR] {
            assert_eq!(reg(&mut r, off), reg(&mut s, off), "offset {off}");
        }
        // The restored line works.
        r.enqueue_input(b"z");
        assert_eq!(restored_lines.take(), 1 << 4);
    }

    #[test]
    fn invalid_states_are_rejected() {
        let (mut s, _lines, _sink) = serial();
        s.enqueue_input(b"q");
        type Corrupt = fn(&mut SerialState);
        let cases: [(Corrupt, &str); 5] = [
            (|s| s.in_buffer = vec![0; 65], "in_buffer"),
            (
                |s| s.interrupt_identification = 0x0e,
                "interrupt_identification",
            ),
            (|s| s.interrupt_enable = 0x10, "interrupt_enable"),
            (|s| s.line_status = 0x60, "line_status"),
            (|s| s.line_status = 0xff, "line_status"),
        ];
        for (corrupt, what) in cases {
            let mut bad = s.state();
            corrupt(&mut bad);
            let irq = IrqLine::new(IrqLines::new(), 4);
            let err = Serial::from_state(bad, irq, Sink::default()).err().unwrap();
            assert!(err.reason.contains(what), "{err}");
        }
    }

    #[test]
    fn survives_random_access() {
        let (mut s, _lines, _sink) = serial();
        crate::testing::hammer(&mut s, &[COM1], 8, None);
        let mut rng = crate::testing::XorShift::new(7);
        for _ in 0..20 {
            let n = (rng.next_u64() % 100) as usize;
            let taken = s.enqueue_input(&vec![0x41; n]);
            assert!(taken <= n);
            crate::testing::hammer(&mut s, &[COM1], 8, None);
            let irq = IrqLine::new(IrqLines::new(), 4);
            assert!(Serial::from_state(s.state(), irq, Sink::default()).is_ok());
        }
    }
}
