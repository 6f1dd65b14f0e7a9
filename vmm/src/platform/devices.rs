//! The device table: every device of the machine is one line of [`device_table!`] plus an
//! implementation of [`PlatformDevice`] (its bus ranges, its IRQ line, how it powers on,
//! saves and restores). Everything else (the typed handles the platform keeps, the saved
//! state, its encoding as one list, placing devices on the buses, validated restoring) is
//! derived from the table, so adding a device touches nothing else in the platform.

use std::fmt::Debug;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use ftvm_devices::{
    AbsentPorts, AbsentPortsState, BusDevice, Clock, Cmos, CmosState, I8042State, IrqLine,
    IrqLines, Pic, PicState, Pit, PitState, Serial, SerialState, StateError, SysCtl, SysCtlState,
    I8042,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::pci::PciState;
use super::{ConsoleOut, PlatformError, SharedConsole, COM1_BASE, SERIAL_IRQ};
use crate::bus::{lock, Bus, BusError, SharedDevice};
use crate::layout;

/// What a device gets from the machine, whether it powers on or is restored.
pub struct Wiring {
    /// The guest's virtual time.
    pub clock: Arc<dyn Clock>,
    /// The ISA interrupt lines devices raise and the PIC reads.
    pub irq_lines: Arc<IrqLines>,
    /// Where the serial port writes, counting the bytes.
    pub console: SharedConsole,
}

impl Wiring {
    /// Wiring around `clock` and the `console` writer, whose byte count is `position`;
    /// every interrupt line low.
    pub fn new(clock: Arc<dyn Clock>, console: ConsoleOut, position: Arc<AtomicU64>) -> Self {
        Self {
            clock,
            irq_lines: IrqLines::new(),
            console: SharedConsole {
                out: Arc::new(Mutex::new(console)),
                position,
            },
        }
    }

    /// ISA line `irq`, for a device that raises it.
    fn line(&self, irq: u8) -> IrqLine {
        IrqLine::new(self.irq_lines.clone(), irq)
    }
}

/// What a freshly powered-on machine tells its devices.
pub struct PowerOn {
    /// Guest memory size, in MiB (the CMOS and the system controller report it).
    pub mem_mib: u64,
    /// Wall-clock time the guest starts at, in Unix seconds (the CMOS clock's start).
    pub wall_clock_unix_secs: u64,
}

/// A device model as the platform places it: where it sits, which line it raises, and
/// how its state is saved and (validated) restored.
pub trait PlatformDevice: BusDevice + Sized + 'static {
    /// Its saved state.
    type State: Debug + Clone + PartialEq + Serialize + DeserializeOwned;
    /// Port-I/O ranges it answers: (base, length).
    const PIO: &'static [(u64, u64)] = &[];
    /// MMIO ranges it answers: (base, length).
    const MMIO: &'static [(u64, u64)] = &[];
    /// The ISA interrupt line it raises (no two devices share one).
    const IRQ: Option<u8> = None;
    /// The device as a machine powers on.
    fn power_on(wiring: &Wiring, power: &PowerOn) -> Self;
    /// The device from a saved state, which may come from a file or the network.
    fn restore(state: Self::State, wiring: &Wiring) -> Result<Self, StateError>;
    /// The device's current state, to save.
    fn save(&self) -> Self::State;
}

impl PlatformDevice for Pic {
    type State = PicState;
    // Master, slave, and the ELCR pair.
    const PIO: &'static [(u64, u64)] = &[(0x20, 2), (0xa0, 2), (0x4d0, 2)];
    fn power_on(_: &Wiring, _: &PowerOn) -> Self {
        Pic::new()
    }
    fn restore(state: PicState, _: &Wiring) -> Result<Self, StateError> {
        Pic::from_state(state)
    }
    fn save(&self) -> PicState {
        self.state()
    }
}

impl PlatformDevice for Pit {
    type State = PitState;
    // The counters, and port 0x61 (speaker gate and channel 2 output).
    const PIO: &'static [(u64, u64)] = &[(0x40, 4), (0x61, 1)];
    // Polled for its edge rather than raising it (`Platform::update_interrupts`).
    const IRQ: Option<u8> = Some(0);
    fn power_on(wiring: &Wiring, _: &PowerOn) -> Self {
        Pit::new(wiring.clock.clone())
    }
    fn restore(state: PitState, wiring: &Wiring) -> Result<Self, StateError> {
        Pit::from_state(state, wiring.clock.clone())
    }
    fn save(&self) -> PitState {
        self.state()
    }
}

impl PlatformDevice for Cmos {
    type State = CmosState;
    const PIO: &'static [(u64, u64)] = &[(0x70, 2)];
    fn power_on(wiring: &Wiring, power: &PowerOn) -> Self {
        Cmos::new(
            wiring.clock.clone(),
            power.wall_clock_unix_secs,
            power.mem_mib << 20,
        )
    }
    fn restore(state: CmosState, wiring: &Wiring) -> Result<Self, StateError> {
        Cmos::from_state(state, wiring.clock.clone())
    }
    fn save(&self) -> CmosState {
        self.state()
    }
}

impl PlatformDevice for Serial<SharedConsole> {
    type State = SerialState;
    const PIO: &'static [(u64, u64)] = &[(COM1_BASE, 8)];
    const IRQ: Option<u8> = Some(SERIAL_IRQ);
    fn power_on(wiring: &Wiring, _: &PowerOn) -> Self {
        Serial::new(wiring.line(SERIAL_IRQ), wiring.console.clone())
    }
    fn restore(state: SerialState, wiring: &Wiring) -> Result<Self, StateError> {
        Serial::from_state(state, wiring.line(SERIAL_IRQ), wiring.console.clone())
    }
    fn save(&self) -> SerialState {
        self.state()
    }
}

impl PlatformDevice for I8042 {
    type State = I8042State;
    const PIO: &'static [(u64, u64)] = &[(0x60, 1), (0x64, 1)];
    fn power_on(_: &Wiring, _: &PowerOn) -> Self {
        I8042::new()
    }
    fn restore(state: I8042State, _: &Wiring) -> Result<Self, StateError> {
        I8042::from_state(state)
    }
    fn save(&self) -> I8042State {
        self.state()
    }
}

impl PlatformDevice for SysCtl {
    type State = SysCtlState;
    const MMIO: &'static [(u64, u64)] = &[(layout::SYSCTL_START, layout::SYSCTL_LEN)];
    fn power_on(_: &Wiring, power: &PowerOn) -> Self {
        // The guest reads its memory size in MiB as a 32-bit register.
        SysCtl::new(power.mem_mib as u32)
    }
    fn restore(state: SysCtlState, _: &Wiring) -> Result<Self, StateError> {
        SysCtl::from_state(state)
    }
    fn save(&self) -> SysCtlState {
        self.state()
    }
}

impl PlatformDevice for AbsentPorts {
    type State = AbsentPortsState;
    const PIO: &'static [(u64, u64)] = ftvm_devices::ABSENT_PORT_RANGES;
    fn power_on(_: &Wiring, _: &PowerOn) -> Self {
        AbsentPorts::new()
    }
    fn restore(state: AbsentPortsState, _: &Wiring) -> Result<Self, StateError> {
        AbsentPorts::from_state(state)
    }
    fn save(&self) -> AbsentPortsState {
        self.state()
    }
}

/// How a platform state is encoded: one list of device states, each tagged with its
/// device, so that a new device is a new tag rather than a new layout.
#[derive(Serialize, Deserialize)]
pub(crate) struct SavedPlatform {
    devices: Vec<DeviceState>,
    console_bytes: u64,
    /// The PCI bus and its functions, on a machine with disks. Absent from snapshots
    /// taken before PCI existed.
    #[serde(default)]
    pci: Option<PciState>,
}

/// Generates, from one line per device (`field: Model => Kind`, after doc comments that
/// describe the device and document its [`DeviceKind`] variant):
/// - [`DeviceKind`], naming each device, and [`DeviceState`], one device's saved state;
/// - [`PlatformState`], every device's state, typed per device for the code that reads one
///   (the CMOS's wall-clock base, the PIC's pending vector), encoded as a [`SavedPlatform`]
///   list and checked on decoding: each device exactly once;
/// - `Devices`, the platform's handles on the devices (shared with the buses), and
///   `Staged`, devices built and validated but not yet in place (all-or-nothing restore).
macro_rules! device_table {
    ($($(#[doc = $doc:literal])* $field:ident: $model:ty => $kind:ident,)+) => {
        /// A device of the machine.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum DeviceKind { $($(#[doc = $doc])* $kind,)+ }

        impl DeviceKind {
            /// Every device, in table order.
            pub const ALL: &'static [DeviceKind] = &[$(DeviceKind::$kind,)+];
        }

        /// One device's saved state, tagged with its device.
        // Sizes differ (the PIT's three channels, a one-counter device): they live only
        // in the one list being encoded or decoded, where boxing would buy nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum DeviceState {
            $(
                #[doc = concat!("The state of the [`DeviceKind::", stringify!($kind), "`] device.")]
                $kind(<$model as PlatformDevice>::State),
            )+
        }

        impl DeviceState {
            /// The device this state belongs to.
            pub fn kind(&self) -> DeviceKind {
                match self { $(DeviceState::$kind(_) => DeviceKind::$kind,)+ }
            }
        }

        /// Every device state, saved together; encoded as a list of [`DeviceState`].
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(try_from = "SavedPlatform", into = "SavedPlatform")]
        pub struct PlatformState {
            $(
                #[doc = concat!("The state of the [`DeviceKind::", stringify!($kind), "`] device.")]
                pub $field: <$model as PlatformDevice>::State,
            )+
            /// Bytes the guest has written to its console so far.
            pub console_bytes: u64,
            /// The PCI part, present exactly when the machine has disks.
            pub pci: Option<PciState>,
        }

        impl From<PlatformState> for SavedPlatform {
            fn from(s: PlatformState) -> Self {
                SavedPlatform {
                    devices: vec![$(DeviceState::$kind(s.$field),)+],
                    console_bytes: s.console_bytes,
                    pci: s.pci,
                }
            }
        }

        impl TryFrom<SavedPlatform> for PlatformState {
            type Error = PlatformError;
            fn try_from(saved: SavedPlatform) -> Result<Self, PlatformError> {
                $(let mut $field = None;)+
                for device in saved.devices {
                    let kind = device.kind();
                    let taken = match device {
                        $(DeviceState::$kind(s) => $field.replace(s).is_some(),)+
                    };
                    if taken {
                        return Err(PlatformError::Duplicate(kind));
                    }
                }
                Ok(PlatformState {
                    $($field: $field.ok_or(PlatformError::Missing(DeviceKind::$kind))?,)+
                    console_bytes: saved.console_bytes,
                    pci: saved.pci,
                })
            }
        }

        /// The platform's handles on its devices, shared with the buses.
        pub(crate) struct Devices { $(pub $field: Arc<Mutex<$model>>,)+ }

        /// Devices built from a state and validated, not yet in place.
        pub(crate) struct Staged { $($field: $model,)+ }

        impl Staged {
            pub fn power_on(wiring: &Wiring, power: &PowerOn) -> Self {
                Staged {
                    $($field: <$model>::power_on(wiring, power),)+
                }
            }

            /// Every device from `state`, or the first device state that is invalid.
            pub fn restore(state: PlatformState, wiring: &Wiring) -> Result<Self, StateError> {
                Ok(Staged {
                    $($field: <$model>::restore(state.$field, wiring)?,)+
                })
            }
        }

        impl Devices {
            pub fn new(staged: Staged) -> Self {
                Devices { $($field: Arc::new(Mutex::new(staged.$field)),)+ }
            }

            /// Put every device at its ranges.
            pub fn place(&self, pio: &mut Bus, mmio: &mut Bus) -> Result<(), BusError> {
                $(
                    for &(base, len) in <$model>::PIO {
                        pio.insert(self.$field.clone() as SharedDevice, base, len)?;
                    }
                    for &(base, len) in <$model>::MMIO {
                        mmio.insert(self.$field.clone() as SharedDevice, base, len)?;
                    }
                )+
                Ok(())
            }

            /// Swap in devices restored elsewhere; the buses keep pointing at the handles.
            pub fn replace(&self, staged: Staged) {
                $(*lock(&self.$field) = staged.$field;)+
            }

            pub fn state(&self, console_bytes: u64, pci: Option<PciState>) -> PlatformState {
                PlatformState {
                    $($field: lock(&self.$field).save(),)+
                    console_bytes,
                    pci,
                }
            }
        }

        #[cfg(test)]
        /// Each device's IRQ line as the table declares it.
        pub(crate) const IRQS: &[(DeviceKind, Option<u8>)] =
            &[$((DeviceKind::$kind, <$model as PlatformDevice>::IRQ),)+];
    };
}

device_table! {
    /// The 8259A interrupt controller pair (master and slave) and its ELCR registers.
    pic: Pic => Pic,
    /// The 8254 interval timer (IRQ 0) and port 0x61.
    pit: Pit => Pit,
    /// The real-time clock and CMOS RAM.
    cmos: Cmos => Cmos,
    /// The 16550 UART at COM1 (IRQ 4): the guest's console.
    serial: Serial<SharedConsole> => Serial,
    /// The 8042 keyboard controller (its reset line ends the VM on reboot).
    i8042: I8042 => I8042,
    /// ftvm's system controller (MMIO): machine identification and power-off.
    sysctl: SysCtl => SysCtl,
    /// The legacy port ranges with nothing behind them: read all ones, ignore writes.
    absent: AbsentPorts => AbsentPorts,
}
