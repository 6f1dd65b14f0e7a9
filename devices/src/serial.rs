//! The 16550 UART of the serial console: vm-superio's model, with a serde state, a
//! bounded input path and an output writer that may fail without taking the VM down.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;

use crate::{BusDevice, IrqLine, StateError};

/// vm-superio's receive FIFO size.
pub const FIFO_SIZE: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
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

    fn try_from(s: SerialState) -> Result<Self, StateError> {
        if s.in_buffer.len() > FIFO_SIZE {
            return Err(StateError::new(
                "serial",
                format!("{} bytes in a {FIFO_SIZE}-byte FIFO", s.in_buffer.len()),
            ));
        }
        // Only these interrupt identification values exist on a 16550 without FIFOs
        // enabled: none pending, THR empty, data available.
        if !matches!(s.interrupt_identification & 0x0f, 0x01 | 0x02 | 0x04) {
            return Err(StateError::new(
                "serial",
                format!("interrupt identification {:#x}", s.interrupt_identification),
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
}

impl<W: Write> Write for LossyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.inner.write_all(buf).is_err() {
            if self.lost == 0 {
                tracing::warn!("serial console output failed; further output is dropped");
            }
            self.lost += buf.len() as u64;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.inner.flush();
        Ok(())
    }
}

pub struct Serial<W: Write + Send> {
    uart: vm_superio::Serial<IrqLine, NoEvents, LossyWriter<W>>,
}

impl<W: Write + Send> Serial<W> {
    pub fn new(irq: IrqLine, out: W) -> Self {
        Self {
            uart: vm_superio::Serial::new(
                irq,
                LossyWriter {
                    inner: out,
                    lost: 0,
                },
            ),
        }
    }

    pub fn from_state(state: SerialState, irq: IrqLine, out: W) -> Result<Self, StateError> {
        let state = vm_superio::serial::SerialState::try_from(state)?;
        let uart = vm_superio::Serial::from_state(
            &state,
            irq,
            NoEvents,
            LossyWriter {
                inner: out,
                lost: 0,
            },
        )
        .map_err(|e| StateError::new("serial", format!("{e:?}")))?;
        Ok(Self { uart })
    }

    pub fn state(&self) -> SerialState {
        self.uart.state().into()
    }

    /// Queue input bytes; returns how many the FIFO took (the rest must wait).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.fifo_free());
        if n == 0 {
            return 0;
        }
        self.uart.enqueue_raw_bytes(&bytes[..n]).unwrap_or(0)
    }

    pub fn fifo_free(&self) -> usize {
        self.uart.fifo_capacity()
    }

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
        if let ([value], Ok(off)) = (data, u8::try_from(offset)) {
            if off < 8 {
                // Errors are from the trigger (infallible) or the writer (absorbed).
                let _ = self.uart.write(off, *value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IrqLines;
    use std::sync::{Arc, Mutex};

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

    fn reg(s: &mut Serial<impl Write + Send>, off: u64) -> u8 {
        let mut b = [0];
        s.read(0x3f8, off, &mut b);
        b[0]
    }

    #[test]
    fn output_reaches_the_writer() {
        let sink = Sink::default();
        let mut s = Serial::new(IrqLine::new(IrqLines::new(), 4), sink.clone());
        for b in b"hi" {
            s.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn input_sets_data_ready_and_raises_the_irq() {
        let lines = IrqLines::new();
        let mut s = Serial::new(IrqLine::new(lines.clone(), 4), Sink::default());
        s.write(0x3f8, 1, &[1]); // IER: data available
        lines.take();
        assert_eq!(s.enqueue_input(b"ab"), 2);
        assert_eq!(lines.take(), 1 << 4);
        assert_eq!(reg(&mut s, 5) & 1, 1);
        assert_eq!(reg(&mut s, 0), b'a');
        assert_eq!(reg(&mut s, 0), b'b');
        assert_eq!(reg(&mut s, 5) & 1, 0);
    }

    #[test]
    fn full_fifo_takes_only_what_fits() {
        let mut s = Serial::new(IrqLine::new(IrqLines::new(), 4), Sink::default());
        assert_eq!(s.enqueue_input(&[b'x'; 100]), FIFO_SIZE);
        assert_eq!(s.enqueue_input(b"more"), 0);
        assert_eq!(s.fifo_free(), 0);
    }

    #[test]
    fn broken_output_is_counted_not_fatal() {
        let mut s = Serial::new(IrqLine::new(IrqLines::new(), 4), Broken);
        s.write(0x3f8, 0, b"x");
        s.write(0x3f8, 0, b"y");
        assert_eq!(s.lost_output_bytes(), 2);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let mut s = Serial::new(IrqLine::new(IrqLines::new(), 4), Sink::default());
        s.write(0x3f8, 7, &[0x42]);
        s.enqueue_input(b"q");
        let json = serde_json::to_string(&s.state()).unwrap();
        let mut r = Serial::from_state(
            serde_json::from_str(&json).unwrap(),
            IrqLine::new(IrqLines::new(), 4),
            Sink::default(),
        )
        .unwrap();
        assert_eq!(reg(&mut r, 7), 0x42);
        assert_eq!(reg(&mut r, 0), b'q');
        let mut bad = s.state();
        bad.in_buffer = vec![0; 65];
        assert!(
            Serial::from_state(bad, IrqLine::new(IrqLines::new(), 4), Sink::default()).is_err()
        );
        let mut bad = s.state();
        bad.interrupt_identification = 0x0e;
        assert!(
            Serial::from_state(bad, IrqLine::new(IrqLines::new(), 4), Sink::default()).is_err()
        );
    }

    #[test]
    fn survives_random_access() {
        let mut s = Serial::new(IrqLine::new(IrqLines::new(), 4), Sink::default());
        crate::testing::hammer(&mut s, &[0x3f8], 8, None);
    }
}
