//! The PC platform of the deterministic machine: the legacy devices, their places on the
//! buses, and the glue the vCPU loop uses (interrupt routing, serial input, stop requests).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ftvm_devices::{
    AbsentPorts, AbsentPortsState, Clock, Cmos, CmosState, I8042State, IrqLine, IrqLines, Pic,
    PicState, Pit, PitState, Serial, SerialState, StateError, SysCtl, SysCtlState, I8042,
};
use serde::{Deserialize, Serialize};

use crate::bus::{lock, Bus, BusError};
use crate::layout;
use crate::stop::StopReason;

/// Where the serial console's output goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// The console writer, shared so that a serial device rebuilt from a state (a checkpoint
/// delta being applied) keeps writing to the same place. It counts the bytes the guest
/// wrote (its position in the console stream): part of the machine state, so that a
/// backup put back in step by a checkpoint knows where the primary's console stands.
#[derive(Clone)]
pub struct SharedConsole {
    out: Arc<Mutex<ConsoleOut>>,
    position: Arc<AtomicU64>,
}

impl Write for SharedConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = lock(&self.out).write(buf);
        // The guest wrote the bytes whatever became of them.
        self.position.fetch_add(buf.len() as u64, Ordering::SeqCst);
        r.map(|_| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.out).flush()
    }
}

pub const SERIAL_IRQ: u8 = 4;
pub const COM1_BASE: u64 = 0x3f8;

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("cannot place a device on the bus")]
    Bus(#[from] BusError),
    #[error("cannot restore the devices")]
    State(#[from] StateError),
}

/// Every device state, saved together.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlatformState {
    pub pic: PicState,
    pub pit: PitState,
    pub cmos: CmosState,
    pub serial: SerialState,
    pub i8042: I8042State,
    pub sysctl: SysCtlState,
    pub absent: AbsentPortsState,
    /// Bytes the guest has written to its console so far (older snapshots: 0).
    #[serde(default)]
    pub console_bytes: u64,
}

pub struct Platform {
    pub pio: Bus,
    pub mmio: Bus,
    pic: Arc<Mutex<Pic>>,
    pit: Arc<Mutex<Pit>>,
    cmos: Arc<Mutex<Cmos>>,
    serial: Arc<Mutex<Serial<SharedConsole>>>,
    console: SharedConsole,
    clock: Arc<dyn Clock>,
    i8042: Arc<Mutex<I8042>>,
    sysctl: Arc<Mutex<SysCtl>>,
    absent: Arc<Mutex<AbsentPorts>>,
    irq_lines: Arc<IrqLines>,
}

impl Platform {
    /// A freshly powered-on PC.
    pub fn new(
        clock: Arc<dyn Clock>,
        mem_mib: u64,
        wall_clock_unix_secs: u64,
        console: ConsoleOut,
        position: Arc<AtomicU64>,
    ) -> Result<Self, PlatformError> {
        let irq_lines = IrqLines::new();
        position.store(0, Ordering::SeqCst);
        let console = SharedConsole {
            out: Arc::new(Mutex::new(console)),
            position,
        };
        Self::assemble(
            Pic::new(),
            Pit::new(clock.clone()),
            Cmos::new(clock.clone(), wall_clock_unix_secs, mem_mib << 20),
            Serial::new(IrqLine::new(irq_lines.clone(), SERIAL_IRQ), console.clone()),
            console,
            clock,
            I8042::new(),
            SysCtl::new(mem_mib as u32),
            AbsentPorts::new(),
            irq_lines,
        )
    }

    /// Devices restored from a saved state (validated on the way in).
    pub fn restore(
        state: PlatformState,
        clock: Arc<dyn Clock>,
        console: ConsoleOut,
        position: Arc<AtomicU64>,
    ) -> Result<Self, PlatformError> {
        let irq_lines = IrqLines::new();
        position.store(state.console_bytes, Ordering::SeqCst);
        let console = SharedConsole {
            out: Arc::new(Mutex::new(console)),
            position,
        };
        Self::assemble(
            Pic::from_state(state.pic)?,
            Pit::from_state(state.pit, clock.clone())?,
            Cmos::from_state(state.cmos, clock.clone())?,
            Serial::from_state(
                state.serial,
                IrqLine::new(irq_lines.clone(), SERIAL_IRQ),
                console.clone(),
            )?,
            console,
            clock,
            I8042::from_state(state.i8042)?,
            SysCtl::from_state(state.sysctl)?,
            AbsentPorts::from_state(state.absent)?,
            irq_lines,
        )
    }

    fn assemble(
        pic: Pic,
        pit: Pit,
        cmos: Cmos,
        serial: Serial<SharedConsole>,
        console: SharedConsole,
        clock: Arc<dyn Clock>,
        i8042: I8042,
        sysctl: SysCtl,
        absent: AbsentPorts,
        irq_lines: Arc<IrqLines>,
    ) -> Result<Self, PlatformError> {
        let pic = Arc::new(Mutex::new(pic));
        let pit = Arc::new(Mutex::new(pit));
        let cmos = Arc::new(Mutex::new(cmos));
        let serial = Arc::new(Mutex::new(serial));
        let i8042 = Arc::new(Mutex::new(i8042));
        let sysctl = Arc::new(Mutex::new(sysctl));
        let absent = Arc::new(Mutex::new(absent));
        let mut pio = Bus::new();
        pio.insert(pic.clone(), 0x20, 2)?;
        pio.insert(pic.clone(), 0xa0, 2)?;
        pio.insert(pic.clone(), 0x4d0, 2)?;
        pio.insert(pit.clone(), 0x40, 4)?;
        pio.insert(pit.clone(), 0x61, 1)?;
        pio.insert(cmos.clone(), 0x70, 2)?;
        pio.insert(serial.clone(), COM1_BASE, 8)?;
        pio.insert(i8042.clone(), 0x60, 1)?;
        pio.insert(i8042.clone(), 0x64, 1)?;
        for &(base, len) in ftvm_devices::ABSENT_PORT_RANGES {
            pio.insert(absent.clone(), base, len)?;
        }
        let mut mmio = Bus::new();
        mmio.insert(sysctl.clone(), layout::SYSCTL_START, layout::SYSCTL_LEN)?;
        Ok(Self {
            pio,
            mmio,
            pic,
            pit,
            cmos,
            serial,
            console,
            clock,
            i8042,
            sysctl,
            absent,
            irq_lines,
        })
    }

    pub fn state(&self) -> PlatformState {
        PlatformState {
            pic: lock(&self.pic).state(),
            pit: lock(&self.pit).state(),
            cmos: lock(&self.cmos).state(),
            serial: lock(&self.serial).state(),
            i8042: lock(&self.i8042).state(),
            sysctl: lock(&self.sysctl).state(),
            absent: lock(&self.absent).state(),
            console_bytes: self.console.position.load(Ordering::SeqCst),
        }
    }

    /// Accesses to legacy ports with nothing behind them.
    pub fn absent_port_accesses(&self) -> u64 {
        lock(&self.absent).accesses()
    }

    /// A device asked to end the VM (power-off, reset).
    pub fn stop_request(&self) -> Option<StopReason> {
        if let Some(status) = lock(&self.sysctl).take_poweroff() {
            return Some(StopReason::PowerOff { status });
        }
        if lock(&self.i8042).take_reset_request() {
            return Some(StopReason::Reset);
        }
        None
    }

    /// Move pending serial input into the UART, as much as its FIFO takes; returns the
    /// bytes moved (what a recording VMM logs).
    pub fn feed_serial(&self, input: &mut VecDeque<u8>) -> Vec<u8> {
        if input.is_empty() {
            return Vec::new();
        }
        let mut serial = lock(&self.serial);
        let (front, _) = input.as_slices();
        let taken = serial.enqueue_input(front);
        input.drain(..taken).collect()
    }

    /// Replace every device's state in place (devices stay on the buses, the console
    /// keeps its writer). The state is validated first; on error nothing changes.
    pub fn load_state(&self, state: PlatformState) -> Result<(), PlatformError> {
        let pic = Pic::from_state(state.pic)?;
        let pit = Pit::from_state(state.pit, self.clock.clone())?;
        let cmos = Cmos::from_state(state.cmos, self.clock.clone())?;
        let serial = Serial::from_state(
            state.serial,
            IrqLine::new(self.irq_lines.clone(), SERIAL_IRQ),
            self.console.clone(),
        )?;
        let i8042 = I8042::from_state(state.i8042)?;
        let sysctl = SysCtl::from_state(state.sysctl)?;
        let absent = AbsentPorts::from_state(state.absent)?;
        *lock(&self.pic) = pic;
        *lock(&self.pit) = pit;
        *lock(&self.cmos) = cmos;
        *lock(&self.serial) = serial;
        *lock(&self.i8042) = i8042;
        *lock(&self.sysctl) = sysctl;
        *lock(&self.absent) = absent;
        self.console
            .position
            .store(state.console_bytes, Ordering::SeqCst);
        self.irq_lines.take();
        Ok(())
    }

    /// Move device IRQ edges into the PIC and raise the timer edge if one is due.
    ///
    /// A due timer edge also waits while another line is requested: the PIC's fixed
    /// priority gives IRQ0 every tie, and a guest whose tick handler takes about a tick
    /// period (an emulated kernel) would otherwise see nothing but timer interrupts, its
    /// UART's transmit interrupt never (measured: a restored stock kernel's console went
    /// silent for good after a `sleep`). The PIT keeps the edge; it is raised once the
    /// other request has been taken. Everything this looks at is guest state, so a replay
    /// decides alike.
    pub fn update_interrupts(&self) {
        let mut pic = lock(&self.pic);
        let raised = self.irq_lines.take();
        for irq in 0..16u8 {
            if raised & (1 << irq) != 0 {
                pic.raise_irq(irq);
            }
        }
        let others_waiting = pic.requested_lines() & !1 != 0;
        if !others_waiting && lock(&self.pit).poll_irq0() {
            pic.raise_irq(0);
        }
    }

    pub fn interrupt_pending(&self) -> bool {
        lock(&self.pic).has_pending_interrupt()
    }

    /// The INTA cycle: the vector to inject.
    pub fn acknowledge(&self) -> Option<u8> {
        lock(&self.pic).acknowledge()
    }

    /// When the next timer interrupt is due (virtual ns).
    pub fn next_deadline_ns(&self) -> Option<u64> {
        lock(&self.pit).next_irq0_deadline_ns()
    }
}
