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

fn main() {
    let asm = Path::new(env!("CARGO_MANIFEST_DIR")).join("asm");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed={}", asm.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&asm).expect("asm directory") {
        let path = entry.expect("asm entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.extension().is_none_or(|e| e != "S") || name == "lib" {
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
        names.push(name);
    }
    names.sort();
    let list: String = names
        .iter()
        .map(|n| format!("    (\"{n}\", concat!(env!(\"OUT_DIR\"), \"/{n}.elf\")),\n"))
        .collect();
    std::fs::write(
        out.join("guests.rs"),
        format!("/// Every tiny guest: (name, path of its ELF).\npub const GUESTS: &[(&str, &str)] = &[\n{list}];\n"),
    )
    .expect("write guests.rs");
}
