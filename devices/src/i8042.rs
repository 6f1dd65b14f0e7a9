//! The i8042 keyboard controller (data 0x60, status/command 0x64) with no keyboard or
//! mouse attached. It matters for one thing: the CPU reset line, which is how guests
//! reboot (command 0xfe, or 0xd1 writing the output port with bit 0 clear). The rest is
//! what an OS probe needs to conclude that a controller exists and nothing is behind it:
//! the command byte, the self and interface tests, port enable/disable, the output port
//! and the loopback commands.
//!
//! No interrupts are raised: with no device attached, the only bytes in the output buffer
//! are replies to controller commands, which drivers poll for (Linux's i8042 driver does),
//! and an IRQ for them could only race with that polling.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::{BusDevice, StateError};

/// The data port: replies to commands are read here, command parameters written.
pub const DATA_PORT: u64 = 0x60;
/// The status register (read) and command register (write).
pub const COMMAND_PORT: u64 = 0x64;
/// Replies beyond this many unread bytes are dropped (a real controller has one).
const OUTPUT_QUEUE_MAX: usize = 16;
/// Status register bits.
const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;
const STATUS_AUX_DATA: u8 = 0x20;
/// Command byte bits.
const CTR_SYSTEM: u8 = 0x04;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
/// Output port bit 0 is the CPU reset line (active low); bit 1 is the A20 gate.
const OUTPUT_PORT_RESET: u8 = 0x01;
/// Commands whose parameter comes through the data port.
const COMMANDS_WITH_DATA: [u8; 5] = [0x60, 0xd1, 0xd2, 0xd3, 0xd4];

/// A byte waiting in the output buffer, and whether it comes from the AUX (mouse) side.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputByte {
    /// The byte itself.
    pub value: u8,
    /// It comes from the AUX side (status bit 5 while it is first in the buffer).
    pub aux: bool,
}

/// Saved state of [`I8042`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct I8042State {
    /// The controller command byte (read with command 0x20, written with 0x60).
    pub command_byte: u8,
    /// The output port: bit 0 is the CPU reset line (active low), bit 1 the A20 gate.
    pub output_port: u8,
    /// Bytes in the output buffer not yet read, oldest first (at most 16).
    pub output: Vec<OutputByte>,
    /// The command waiting for its data byte, if any (0x60, 0xd1..=0xd4).
    pub pending_command: Option<u8>,
    /// The last write went to the command port (status bit 3).
    pub last_was_command: bool,
    /// A CPU reset the guest asked for, not yet taken by [`I8042::take_reset_request`].
    pub reset_requested: bool,
    /// The last byte read from the data port, returned again when the buffer is empty.
    pub last_output: u8,
}

/// The keyboard controller, registered at [`DATA_PORT`] and [`COMMAND_PORT`] (one port
/// each).
#[derive(Debug)]
pub struct I8042 {
    command_byte: u8,
    output_port: u8,
    output: VecDeque<OutputByte>,
    pending_command: Option<u8>,
    last_was_command: bool,
    reset_requested: bool,
    last_output: u8,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// The state a BIOS leaves: self-test passed (system flag), interrupts off,
    /// translation on, reset line high and A20 enabled.
    pub fn new() -> Self {
        Self {
            command_byte: 0x40 | CTR_SYSTEM,
            output_port: 0x02 | OUTPUT_PORT_RESET,
            output: VecDeque::new(),
            pending_command: None,
            last_was_command: false,
            reset_requested: false,
            last_output: 0,
        }
    }

    /// Saves the state.
    pub fn state(&self) -> I8042State {
        I8042State {
            command_byte: self.command_byte,
            output_port: self.output_port,
            output: self.output.iter().copied().collect(),
            pending_command: self.pending_command,
            last_was_command: self.last_was_command,
            reset_requested: self.reset_requested,
            last_output: self.last_output,
        }
    }

    /// Restores a saved state, refusing an output buffer over 16 bytes or a pending command
    /// that takes no data.
    pub fn from_state(state: I8042State) -> Result<Self, StateError> {
        if state.output.len() > OUTPUT_QUEUE_MAX {
            return Err(StateError::new(
                "i8042",
                format!(
                    "output holds {} bytes, at most {OUTPUT_QUEUE_MAX}",
                    state.output.len()
                ),
            ));
        }
        if let Some(cmd) = state.pending_command {
            if !COMMANDS_WITH_DATA.contains(&cmd) {
                return Err(StateError::new(
                    "i8042",
                    format!("pending_command {cmd:#x} takes no data"),
                ));
            }
        }
        Ok(Self {
            command_byte: state.command_byte,
            output_port: state.output_port,
            output: state.output.into(),
            pending_command: state.pending_command,
            last_was_command: state.last_was_command,
            reset_requested: state.reset_requested,
            last_output: state.last_output,
        })
    }

    /// Whether the guest asked for a CPU reset since the last call.
    pub fn take_reset_request(&mut self) -> bool {
        std::mem::take(&mut self.reset_requested)
    }

    fn reply(&mut self, value: u8, aux: bool) {
        if self.output.len() < OUTPUT_QUEUE_MAX {
            self.output.push_back(OutputByte { value, aux });
        }
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        // A new command abandons one still waiting for its data byte.
        self.pending_command = None;
        match cmd {
            0x20 => self.reply(self.command_byte, false),
            c if COMMANDS_WITH_DATA.contains(&c) => self.pending_command = Some(c),
            // Controller self-test passed; it also sets the system flag.
            0xaa => {
                self.command_byte |= CTR_SYSTEM;
                self.reply(0x55, false);
            }
            // AUX and keyboard interface tests: no error (the lines are not stuck).
            0xa9 | 0xab => self.reply(0x00, false),
            0xa7 => self.command_byte |= CTR_AUX_DISABLED,
            0xa8 => self.command_byte &= !CTR_AUX_DISABLED,
            0xad => self.command_byte |= CTR_KBD_DISABLED,
            0xae => self.command_byte &= !CTR_KBD_DISABLED,
            0xd0 => self.reply(self.output_port, false),
            // Pulse output lines 0..3 low for those bits clear in the low nibble; line 0
            // is the reset line.
            0xf0..=0xff if cmd & 1 == 0 => self.reset_requested = true,
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending_command.take() {
            Some(0x60) => self.command_byte = value,
            Some(0xd1) => {
                self.output_port = value;
                if value & OUTPUT_PORT_RESET == 0 {
                    self.reset_requested = true;
                }
            }
            // Loopback: the byte comes back as if the keyboard (0xd2) or mouse (0xd3) sent it.
            Some(0xd2) => self.reply(value, false),
            Some(0xd3) => self.reply(value, true),
            // 0xd4 (a byte for the mouse) and bytes for the keyboard: nobody is there to
            // answer, and the driver's wait for an answer times out, as on hardware.
            _ => {}
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        // The system flag mirrors the command byte's.
        if self.command_byte & CTR_SYSTEM != 0 {
            status |= STATUS_SYSTEM;
        }
        if let Some(front) = self.output.front() {
            status |= STATUS_OUTPUT_FULL;
            if front.aux {
                status |= STATUS_AUX_DATA;
            }
        }
        if self.last_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }

    fn read_data(&mut self) -> u8 {
        if let Some(byte) = self.output.pop_front() {
            self.last_output = byte.value;
        }
        self.last_output
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset != 0 {
            data.fill(0xff);
            return;
        }
        data[0] = match base {
            DATA_PORT => self.read_data(),
            COMMAND_PORT => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let &[value] = data else { return };
        match (base, offset) {
            (DATA_PORT, 0) => self.data(value),
            (COMMAND_PORT, 0) => self.command(value),
            _ => {}
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

    fn cmd(k: &mut I8042, c: u8) {
        k.write(COMMAND_PORT, 0, &[c]);
    }

    fn data(k: &mut I8042, v: u8) {
        k.write(DATA_PORT, 0, &[v]);
    }

    #[test]
    fn status_bits() {
        let mut k = I8042::new();
        assert_eq!(
            inb(&mut k, COMMAND_PORT),
            0x14,
            "system flag, unlocked, empty"
        );
        cmd(&mut k, 0x20);
        assert_eq!(
            inb(&mut k, COMMAND_PORT),
            0x1d,
            "full, last write a command"
        );
        inb(&mut k, DATA_PORT);
        data(&mut k, 0xf4); // a byte for the absent keyboard
        assert_eq!(inb(&mut k, COMMAND_PORT), 0x14);
    }

    #[test]
    fn self_test_and_command_byte() {
        let mut k = I8042::new();
        cmd(&mut k, 0xaa);
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(inb(&mut k, DATA_PORT), 0x55);
        assert_eq!(
            inb(&mut k, DATA_PORT),
            0x55,
            "empty buffer repeats the last byte"
        );
        cmd(&mut k, 0x60);
        data(&mut k, 0x47);
        cmd(&mut k, 0x20);
        assert_eq!(inb(&mut k, DATA_PORT), 0x47);
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
        cmd(&mut k, 0x60);
        data(&mut k, 0x00);
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_SYSTEM, 0);
    }

    #[test]
    fn interface_tests_and_port_enables() {
        let mut k = I8042::new();
        for (c, bit, set) in [
            (0xa7, CTR_AUX_DISABLED, true),
            (0xa8, CTR_AUX_DISABLED, false),
            (0xad, CTR_KBD_DISABLED, true),
            (0xae, CTR_KBD_DISABLED, false),
        ] {
            cmd(&mut k, c);
            cmd(&mut k, 0x20);
            assert_eq!(inb(&mut k, DATA_PORT) & bit != 0, set, "command {c:#x}");
        }
        cmd(&mut k, 0xab);
        cmd(&mut k, 0xa9);
        assert_eq!([inb(&mut k, DATA_PORT), inb(&mut k, DATA_PORT)], [0, 0]);
        cmd(&mut k, 0x12); // unknown: ignored
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn loopback_commands() {
        let mut k = I8042::new();
        cmd(&mut k, 0xd3);
        data(&mut k, 0x5a);
        assert_eq!(inb(&mut k, COMMAND_PORT) & 0x21, 0x21, "AUX data");
        assert_eq!(inb(&mut k, DATA_PORT), 0x5a);
        cmd(&mut k, 0xd2);
        data(&mut k, 0xa5);
        assert_eq!(inb(&mut k, COMMAND_PORT) & 0x21, 0x01, "keyboard data");
        assert_eq!(inb(&mut k, DATA_PORT), 0xa5);
        cmd(&mut k, 0xd4);
        data(&mut k, 0xff); // to the absent mouse
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn reset_by_pulse_and_by_output_port() {
        let mut k = I8042::new();
        assert!(!k.take_reset_request());
        cmd(&mut k, 0xfe);
        assert!(k.take_reset_request());
        assert!(!k.take_reset_request(), "reported once");
        cmd(&mut k, 0xff); // pulses no line
        cmd(&mut k, 0xfd); // pulses line 1 only
        assert!(!k.take_reset_request());
        cmd(&mut k, 0xf0); // pulses all four, the reset line included
        assert!(k.take_reset_request());
        cmd(&mut k, 0xd1);
        data(&mut k, 0x03);
        assert!(!k.take_reset_request());
        cmd(&mut k, 0xd0);
        assert_eq!(inb(&mut k, DATA_PORT), 0x03);
        cmd(&mut k, 0xd1);
        data(&mut k, 0xfe);
        assert!(k.take_reset_request());
        // A command in between cancels the pending data byte.
        cmd(&mut k, 0xd1);
        cmd(&mut k, 0xae);
        data(&mut k, 0x00);
        assert!(!k.take_reset_request());
    }

    #[test]
    fn output_queue_is_bounded() {
        let mut k = I8042::new();
        for _ in 0..100 {
            cmd(&mut k, 0xaa);
        }
        assert_eq!(k.state().output.len(), OUTPUT_QUEUE_MAX);
        for _ in 0..OUTPUT_QUEUE_MAX {
            assert_eq!(inb(&mut k, DATA_PORT), 0x55);
        }
        assert_eq!(inb(&mut k, COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn other_ports_widths_read_all_ones() {
        let mut k = I8042::new();
        let mut w = [0; 2];
        k.read(DATA_PORT, 0, &mut w);
        assert_eq!(w, [0xff; 2]);
        let mut b = [0];
        k.read(COMMAND_PORT, 1, &mut b);
        assert_eq!(b[0], 0xff);
        k.write(COMMAND_PORT, 0, &[0xfe, 0x00]);
        assert!(!k.take_reset_request(), "2-byte write ignored");
    }

    #[test]
    fn state_round_trips_and_bad_state_is_rejected() {
        let mut k = I8042::new();
        cmd(&mut k, 0xaa);
        cmd(&mut k, 0xd3);
        data(&mut k, 0x11);
        cmd(&mut k, 0x60);
        let json = serde_json::to_string(&k.state()).unwrap();
        let mut r = I8042::from_state(serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(r.state(), k.state());
        for dev in [&mut k, &mut r] {
            data(dev, 0x45);
        }
        for port in [COMMAND_PORT, DATA_PORT, COMMAND_PORT, DATA_PORT, DATA_PORT] {
            assert_eq!(inb(&mut r, port), inb(&mut k, port));
        }
        let mut bad = k.state();
        bad.output = vec![
            OutputByte {
                value: 0,
                aux: false
            };
            17
        ];
        let err = I8042::from_state(bad).unwrap_err();
        assert!(err.reason.contains("output"), "{err}");
        let mut bad = k.state();
        bad.pending_command = Some(0x20);
        let err = I8042::from_state(bad).unwrap_err();
        assert!(err.reason.contains("pending_command"), "{err}");
    }

    #[test]
    fn survives_random_access() {
        let mut k = I8042::new();
        crate::testing::hammer(&mut k, &[DATA_PORT, COMMAND_PORT], 1, None);
        assert!(I8042::from_state(k.state()).is_ok());
    }
}
