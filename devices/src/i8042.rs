//! The i8042 keyboard controller (data 0x60, status/command 0x64) with no keyboard
//! attached. It matters for one thing: the CPU reset line, which is how guests reboot.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, StateError};

pub const DATA_PORT: u64 = 0x60;
pub const COMMAND_PORT: u64 = 0x64;
const OUTPUT_QUEUE_MAX: usize = 16;
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct I8042State {
    pub command_byte: u8,
    pub output: Vec<u8>,
    /// The command waiting for its data byte (0x60 or 0xd1), if any.
    pub pending_command: Option<u8>,
    pub last_was_command: bool,
    pub reset_requested: bool,
}

#[derive(Debug)]
pub struct I8042 {
    command_byte: u8,
    output: VecDeque<u8>,
    pending_command: Option<u8>,
    last_was_command: bool,
    reset_requested: bool,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    pub fn new() -> Self {
        Self {
            // Keyboard interrupt off, system flag set, translation on.
            command_byte: 0x44,
            output: VecDeque::new(),
            pending_command: None,
            last_was_command: false,
            reset_requested: false,
        }
    }

    pub fn state(&self) -> I8042State {
        I8042State {
            command_byte: self.command_byte,
            output: self.output.iter().copied().collect(),
            pending_command: self.pending_command,
            last_was_command: self.last_was_command,
            reset_requested: self.reset_requested,
        }
    }

    pub fn from_state(state: I8042State) -> Result<Self, StateError> {
        if state.output.len() > OUTPUT_QUEUE_MAX {
            return Err(StateError::new(
                "i8042",
                format!("{} queued bytes", state.output.len()),
            ));
        }
        if !matches!(state.pending_command, None | Some(0x60) | Some(0xd1)) {
            return Err(StateError::new("i8042", "unknown pending command"));
        }
        Ok(Self {
            command_byte: state.command_byte,
            output: state.output.into(),
            pending_command: state.pending_command,
            last_was_command: state.last_was_command,
            reset_requested: state.reset_requested,
        })
    }

    /// Whether the guest asked for a CPU reset since the last call.
    pub fn take_reset_request(&mut self) -> bool {
        std::mem::take(&mut self.reset_requested)
    }

    fn reply(&mut self, byte: u8) {
        if self.output.len() < OUTPUT_QUEUE_MAX {
            self.output.push_back(byte);
        }
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        match cmd {
            0x20 => self.reply(self.command_byte),
            0x60 | 0xd1 => self.pending_command = Some(cmd),
            0xaa => self.reply(0x55),        // controller self-test passed
            0xa9 | 0xab => self.reply(0x00), // port tests passed
            0xa7 => self.command_byte |= 0x20,
            0xa8 => self.command_byte &= !0x20,
            0xad => self.command_byte |= 0x10,
            0xae => self.command_byte &= !0x10,
            0xd0 => self.reply(0x01), // output port: reset line high
            0xfe => self.reset_requested = true,
            // Pulse output lines: bit 0 low pulses the reset line.
            0xf0..=0xfd if cmd & 1 == 0 => self.reset_requested = true,
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending_command.take() {
            Some(0x60) => self.command_byte = value,
            Some(_) if value & 1 == 0 => self.reset_requested = true,
            Some(_) => {}
            // A byte for the (absent) keyboard: it times out, like real hardware.
            None => {}
        }
    }

    fn status(&self) -> u8 {
        let mut s = STATUS_SYSTEM;
        if !self.output.is_empty() {
            s |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            s |= STATUS_COMMAND;
        }
        s
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, _offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match base {
            DATA_PORT => self.output.pop_front().unwrap_or(0),
            _ => self.status(),
        };
    }

    fn write(&mut self, base: u64, _offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match base {
            DATA_PORT => self.data(*value),
            _ => self.command(*value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inb(k: &mut I8042, port: u64) -> u8 {
        let mut b = [0];
        k.read(port, 0, &mut b);
        b[0]
    }

    #[test]
    fn self_test_and_command_byte() {
        let mut k = I8042::new();
        k.write(COMMAND_PORT, 0, &[0xaa]);
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(inb(&mut k, DATA_PORT), 0x55);
        k.write(COMMAND_PORT, 0, &[0x60]);
        k.write(DATA_PORT, 0, &[0x47]);
        k.write(COMMAND_PORT, 0, &[0x20]);
        assert_eq!(inb(&mut k, DATA_PORT), 0x47);
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn reset_by_pulse_and_by_output_port() {
        let mut k = I8042::new();
        assert!(!k.take_reset_request());
        k.write(COMMAND_PORT, 0, &[0xfe]);
        assert!(k.take_reset_request());
        assert!(!k.take_reset_request(), "reported once");
        k.write(COMMAND_PORT, 0, &[0xd1]);
        k.write(DATA_PORT, 0, &[0x01]);
        assert!(!k.take_reset_request());
        k.write(COMMAND_PORT, 0, &[0xd1]);
        k.write(DATA_PORT, 0, &[0xfe]);
        assert!(k.take_reset_request());
    }

    #[test]
    fn output_queue_is_bounded() {
        let mut k = I8042::new();
        for _ in 0..100 {
            k.write(COMMAND_PORT, 0, &[0xaa]);
        }
        assert_eq!(k.state().output.len(), OUTPUT_QUEUE_MAX);
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let mut k = I8042::new();
        k.write(COMMAND_PORT, 0, &[0xaa]);
        k.write(COMMAND_PORT, 0, &[0x60]);
        let json = serde_json::to_string(&k.state()).unwrap();
        let mut r = I8042::from_state(serde_json::from_str(&json).unwrap()).unwrap();
        r.write(DATA_PORT, 0, &[0x11]);
        assert_eq!(inb(&mut r, DATA_PORT), 0x55);
        let mut bad = k.state();
        bad.output = vec![0; 17];
        assert!(I8042::from_state(bad).is_err());
        let mut bad = k.state();
        bad.pending_command = Some(0x20);
        assert!(I8042::from_state(bad).is_err());
    }

    #[test]
    fn survives_random_access() {
        let mut k = I8042::new();
        crate::testing::hammer(&mut k, &[DATA_PORT, COMMAND_PORT], 1, None);
    }
}
