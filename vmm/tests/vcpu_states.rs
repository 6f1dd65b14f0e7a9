//! The vCPU thread as a state machine: it starts paused, runs on Resume, pauses on Pause
//! (even in the middle of a busy loop that makes no exits), saves state only while paused,
//! and finishes with a report.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ftvm::clock::ClockMode;
use ftvm::machine::{Vm, VmConfig, VmIo};
use ftvm::stop::StopReason;
use ftvm::vcpu::{VcpuError, VcpuEvent};

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn wait_for_stop(vm: &Vm) -> StopReason {
    for _ in 0..600 {
        if let Some(VcpuEvent::Stopped(r)) = vm.vcpu.next_event(Duration::from_millis(100)) {
            return r;
        }
    }
    panic!("the guest did not stop within a minute");
}

#[test]
fn pause_save_resume_finish() {
    common::require_kvm();
    let console = Console::default();
    let config = VmConfig {
        kernel: common::guest("usermode").into(),
        initrd: None,
        cmdline: String::new(),
        mem_mib: 16,
        clock: ClockMode::Host,
        boot_event_bound_ns: None,
        boot_seed: false,
        trace_exits: None,
        disks: Vec::new(),
        net: None,
    };
    let mut vm = Vm::boot(
        &config,
        VmIo::new(Box::new(console.clone()), Default::default()),
    )
    .expect("boot");

    // Paused at creation: saving works and shows the entry point with nothing run yet.
    let state = vm.vcpu.save_state().expect("save while paused");
    assert_eq!(state.vcpu.regs.rip, 0x10_0000);
    assert_eq!(state.vcpu.ordinal, 0);
    assert!(console.text().is_empty());

    vm.vcpu.resume();
    // Wait until the guest is in its user-mode loop, then pause it there.
    for _ in 0..500 {
        if console.text().contains("entering CPL3") {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(matches!(vm.vcpu.save_state(), Err(VcpuError::NotPaused)));
    vm.vcpu
        .pause(Duration::from_secs(5))
        .expect("pause a running vCPU");
    let paused = vm.vcpu.save_state().expect("save while paused");
    assert!(paused.vcpu.ordinal > 0);
    let clock_at_pause = paused.clock_ns;
    std::thread::sleep(Duration::from_millis(20));
    let again = vm.vcpu.save_state().expect("save again");
    assert_eq!(
        again.clock_ns, clock_at_pause,
        "guest time stands still while paused"
    );
    assert_eq!(again.vcpu.regs.rip, paused.vcpu.regs.rip);

    vm.vcpu.resume();
    assert_eq!(wait_for_stop(&vm), StopReason::PowerOff { status: 0 });
    let report = vm.vcpu.finish();
    assert!(report.ordinal > paused.vcpu.ordinal);
    assert!(
        console.text().contains("usermode: back in kernel"),
        "{}",
        console.text()
    );
}

#[test]
fn finish_stops_a_running_guest() {
    common::require_kvm();
    let config = VmConfig {
        kernel: common::guest("serial").into(),
        initrd: None,
        cmdline: String::new(),
        mem_mib: 16,
        clock: ClockMode::Host,
        boot_event_bound_ns: None,
        boot_seed: false,
        trace_exits: None,
        disks: Vec::new(),
        net: None,
    };
    // The serial guest waits for input forever (its input channel stays open).
    let (_input_tx, input_rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let mut vm = Vm::boot(
        &config,
        VmIo::new(Box::new(Console::default()), Default::default()).input(Some(input_rx)),
    )
    .expect("boot");
    vm.vcpu.resume();
    std::thread::sleep(Duration::from_millis(50));
    let report = vm.vcpu.finish();
    assert_eq!(report.stop, StopReason::Finished);
}
