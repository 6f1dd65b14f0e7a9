//! `ftvm status` and `console`: reading a pair's shared directory.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

use super::args::{ConsoleArgs, StatusArgs};
use super::{install_stop_signals, STOP_REQUESTED};

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let vm = args.vm;
    let shared = ftvm::ft::shared::SharedDir::new(&vm.shared_dir, &vm.name)?;
    if args.json {
        let owner = shared.current_owner()?;
        anyhow::ensure!(
            owner.is_some(),
            "no VM '{}' in {}",
            vm.name,
            vm.shared_dir.display()
        );
        let (mut vmms, mut unreadable) = (Vec::new(), Vec::new());
        for path in shared.status_files()? {
            match ftvm::ft::status::StatusReport::read(&path) {
                Ok(r) => vmms.push(r),
                Err(e) => unreadable.push(e),
            }
        }
        let (epoch, holder) = owner.unzip();
        let out = serde_json::json!({
            "vm": vm.name,
            "epoch": epoch,
            "owner": holder,
            "now_unix_ms": ftvm::ft::status::now_unix_ms(),
            "vmms": vmms,
            "unreadable": unreadable,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(0);
    }
    match shared.current_owner()? {
        Some((epoch, holder)) => println!("{}: epoch {epoch} owned by {holder}", vm.name),
        None => anyhow::bail!("no VM '{}' in {}", vm.name, vm.shared_dir.display()),
    }
    let now = ftvm::ft::status::now_unix_ms();
    for path in shared.status_files()? {
        match ftvm::ft::status::StatusReport::read(&path) {
            Ok(r) => println!("{}", r.render(now)),
            Err(e) => println!("unreadable status {e}"),
        }
    }
    Ok(0)
}

pub(crate) fn console(args: ConsoleArgs) -> anyhow::Result<i32> {
    install_stop_signals()?;
    let shared = ftvm::ft::shared::SharedDir::new(&args.vm.shared_dir, &args.vm.name)?;
    let path = shared.console_path();
    let mut file = std::fs::File::open(&path)
        .with_context(|| format!("cannot open the console stream {}", path.display()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = std::io::stdout().lock();
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            out.flush()?;
            continue;
        }
        if !args.follow || STOP_REQUESTED.load(Ordering::SeqCst) {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
