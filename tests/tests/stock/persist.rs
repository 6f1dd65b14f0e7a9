//! What the guest writes to its disk outlives the VMM: the guest restored from the
//! snapshot writes a file of random bytes to ext4 and syncs; the VMM saves the VM at the
//! console line that follows and ends there (the power goes off). A new VMM restores that
//! save over the same image, and the guest reads the file back from the disk itself
//! (unmounted, every cached page dropped, mounted again): the same SHA-256.

use super::*;

pub fn written_files_survive_power_off_and_restore(
    hosts: &Hosts,
    snap: &Path,
    disks: &StockDisks,
    dir: &Path,
) {
    let copy = disks.copy_to(&dir.join("persist"));
    let saved = dir.join("persist-snap");
    let t = Instant::now();
    let restore = |from: &Path| {
        let mut args = vec!["run".to_string()];
        args.extend(restore_args(from, &copy));
        args
    };

    let mut args = restore(snap);
    // The typed line says persist-$((6*7)); only the shell's answer matches.
    args.extend(
        [
            "--snapshot-on",
            "persist-42",
            "--exit-after-snapshot",
            "--snapshot-dir",
        ]
        .map(String::from),
    );
    args.push(saved.display().to_string());
    let mut vm = hosts.console("a", &args);
    let out = vm.run(
        "head -c 65536 /dev/urandom >/mnt/persist.bin && sync && sha256sum /mnt/persist.bin",
        Duration::from_secs(300),
    );
    let want = out
        .split_whitespace()
        .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| panic!("no SHA-256 from the guest:\n{out}"))
        .to_owned();
    vm.wait_prompt(Duration::from_secs(120));
    vm.type_line("echo persist-$((6*7))");
    assert_eq!(vm.wait(Duration::from_secs(300)), 0, "{}", vm.stderr());
    assert!(vm.stderr().contains("snapshot saved to"), "{}", vm.stderr());

    let mut vm = hosts.console("a", &restore(&saved));
    let out = vm.run(
        "umount /mnt && echo 3 >/proc/sys/vm/drop_caches && mount /dev/vda /mnt && sha256sum /mnt/persist.bin",
        Duration::from_secs(300),
    );
    assert!(
        out.contains(&want),
        "read back after the restore:\n{out}\nwritten: {want}"
    );
    assert!(out.contains("status 0"), "{out}");
    assert_eq!(vm.exit(0, Duration::from_secs(300)), 0, "{}", vm.stderr());
    assert_eq!(
        sha256_hex(&copy.read_data_file("persist.bin")),
        want,
        "the file in the image, read by the host"
    );
    eprintln!(
        "stock guest: a file written and synced, the VMM ended at a save, a new VMM restored it and the guest read the file back from its disk: {:.0} s",
        t.elapsed().as_secs_f64()
    );
}
