//! Assemble and link each tiny test guest (asm/*.S) into an ELF in OUT_DIR with the GNU
//! binutils of the build machine. Nothing is downloaded.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} (are binutils installed?): {e}",
            cmd.get_program()
        )
    });
    if !status.success() {
        panic!("{cmd:?} failed with {status}");
    }
}

/// Wrap a guest in the bzImage format: a boot sector and one setup sector holding the
/// setup header, then the protected-mode part loaded at code32_start (1 MiB), whose 64-bit
/// entry point is 0x200 bytes in. So the guest is linked 0x200 above 1 MiB.
fn bzimage(asm: &Path, out: &Path, obj: &Path, name: &str) {
    let script = std::fs::read_to_string(asm.join("link.ld"))
        .expect("link.ld")
        .replace(". = 0x100000;", ". = 0x100200;");
    let bz_ld = out.join("link-bzimage.ld");
    std::fs::write(&bz_ld, script).expect("write link-bzimage.ld");
    let elf = out.join(format!("{name}.bz.elf"));
    let flat = out.join(format!("{name}.bz.bin"));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-nostdlib",
            "-static",
            "--build-id=none",
            "-T",
        ])
        .arg(&bz_ld)
        .arg("-o")
        .arg(&elf)
        .arg(obj));
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&flat));
    let code = std::fs::read(&flat).expect("flat binary");
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects: one sector after the boot sector
    image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // protocol 2.15
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
    image.extend_from_slice(&[0xf4; 0x200]); // 32-bit entry: unused (hlt)
    image.extend_from_slice(&code);
    std::fs::write(out.join(format!("{name}.bzimage")), image).expect("write bzImage");
}

fn main() {
    let asm = Path::new(env!("CARGO_MANIFEST_DIR")).join("asm");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", asm.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&asm).expect("asm directory") {
        let path = entry.expect("asm entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|e| e != "S") || name == "lib" || name.ends_with("-lib") {
            continue;
        }
        let obj = out.join(format!("{name}.o"));
        let elf = out.join(format!("{name}.elf"));
        run(Command::new("as")
            .arg("--64")
            .arg("-I")
            .arg(&asm)
            .arg("-o")
            .arg(&obj)
            .arg(&path));
        run(Command::new("ld")
            .args([
                "-m",
                "elf_x86_64",
                "-nostdlib",
                "-static",
                "--build-id=none",
                "-T",
            ])
            .arg(asm.join("link.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj));
        if name == "timer" {
            bzimage(&asm, &out, &obj, &name);
            names.push(format!("{name}.bzimage"));
        }
        names.push(name);
    }
    names.sort();
    let list: String = names
        .iter()
        .map(|n| {
            let file = if n.ends_with(".bzimage") {
                n.clone()
            } else {
                format!("{n}.elf")
            };
            format!("    (\"{n}\", concat!(env!(\"OUT_DIR\"), \"/{file}\")),\n")
        })
        .collect();
    std::fs::write(
        out.join("guests.rs"),
        format!("/// Every tiny guest: (name, path of its ELF).\npub const GUESTS: &[(&str, &str)] = &[\n{list}];\n"),
    )
    .expect("write guests.rs");
}
