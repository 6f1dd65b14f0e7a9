//! A VMM whose guest console a test types into and reads: the stock kernel's shell loop
//! (`# ` prompt, one command line at a time). Lines typed ahead of a running command can
//! get lost inside that guest, so [`ConsoleVmm::run`] types one line and waits for the
//! marker it ends with before the next.

use crate::Vmm;
use std::io::{Read, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A VMM with its guest console on pipes: a test types lines in and reads the output.
pub struct ConsoleVmm {
    vmm: Vmm,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    steps: u32,
    /// Where in the console output the next prompt is looked for.
    prompt_from: usize,
}

/// What `pipe` gives, gathered by a thread of its own as it comes.
pub(crate) fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl ConsoleVmm {
    /// Start `cmd` (an ftvm command line) with its console on pipes.
    pub fn spawn(mut cmd: Command) -> Self {
        // The vCPU's line at a stop says where the guest was when a test gives up on it.
        if std::env::var_os("FTVM_LOG").is_none() {
            cmd.env("FTVM_LOG", "warn,ftvm::stop=info");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ftvm");
        let stdin = child.stdin.take();
        let stdout = collect(child.stdout.take().expect("stdout"));
        Self {
            vmm: Vmm::from_child(child),
            stdin,
            stdout,
            steps: 0,
            prompt_from: 0,
        }
    }

    /// What the guest printed so far; the guest's tty ends lines with CR LF.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace("\r\n", "\n")
    }

    /// What the VMM itself has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.vmm.stderr()
    }

    pub(crate) fn both(&self) -> String {
        format!(
            "--- console:\n{}\n--- ftvm:\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Type `line` (a newline is added).
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("type '{line}': {e}\n{}", self.both()));
    }

    /// Until a console line (after the prompt) is exactly `line`; panics after `limit`
    /// or if the VMM exits first.
    pub fn wait_line(&mut self, line: &str, limit: Duration) {
        crate::wait_until(self, &format!("console line '{line}'"), limit, |c| {
            c.stdout()
                .lines()
                .any(|l| l.trim_start_matches("# ").trim_end() == line)
        });
    }

    /// Until the shell has printed its prompt (`# `) since the last command ended: a line
    /// typed before the shell reads (right after a restore, say) can be lost in this
    /// guest. (Not "the output ends with the prompt": a background job may print after.)
    pub fn wait_prompt(&mut self, limit: Duration) {
        crate::wait_until(self, "prompt", limit, |c| {
            c.stdout()
                .get(c.prompt_from..)
                .is_some_and(|s| s.contains("# "))
        });
    }

    /// Right after a start or restore: until the shell answers. A line typed while the
    /// restored shell is still setting up its terminal can be discarded (seen in the suite:
    /// the line echoed, never run; or no prompt at all), so a harmless `echo` is typed
    /// again every 20 s until its answer appears; the next prompt is looked for after it.
    fn settle(&mut self, limit: Duration) {
        let t = std::time::Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            self.type_line(&format!("echo settled-$(({tries}*1000))"));
            let want = format!("settled-{}", tries * 1000);
            let asked = std::time::Instant::now();
            while asked.elapsed() < Duration::from_secs(20) {
                if let Some(end) = answer_end(&self.stdout(), &want) {
                    self.prompt_from = end;
                    return;
                }
                if let Some(s) = self.vmm.try_wait() {
                    panic!(
                        "ftvm exited with {s} before the shell answered:\n{}",
                        self.both()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if t.elapsed() >= limit {
                panic!(
                    "the shell did not answer within {limit:?} ({tries} tries):\n{}",
                    crate::Watched::last_words(self)
                );
            }
        }
    }

    /// At the prompt, type one command line, wait until it has finished (within `limit`)
    /// and return what it printed, with its exit status as the last line (`status N`).
    pub fn run(&mut self, command: &str, limit: Duration) -> String {
        if self.steps == 0 {
            self.settle(limit);
        }
        self.wait_prompt(limit);
        self.steps += 1;
        let marker = format!("ftvm-step-{}-done", self.steps);
        let before = self.stdout().len();
        self.type_line(&format!("{command}; echo status $?; echo {marker}"));
        self.wait_line(&marker, limit);
        let text = self.stdout();
        // The next prompt comes after the marker's line (not its echo in the typed line).
        self.prompt_from = text
            .rfind(&format!("\n{marker}"))
            .map_or(text.len(), |i| i + marker.len() + 1);
        let new = &text[before.min(text.len())..];
        // Drop the echo of the typed line and the marker.
        new.lines()
            .filter(|l| !l.contains(&marker))
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Type `exit N` and wait for the VMM to end: its exit status (-1 for a signal).
    pub fn exit(&mut self, status: i32, limit: Duration) -> i32 {
        self.type_line(&format!("exit {status}"));
        self.wait(limit)
    }

    /// The VMM's exit status (-1 for a signal); panics (killing it) after `limit`.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        self.vmm.wait(limit)
    }

    /// Its exit status once it has ended (-1 for a signal), without waiting.
    pub fn try_wait(&mut self) -> Option<i32> {
        self.vmm.try_wait()
    }

    /// SIGKILL, as a power loss would end it.
    pub fn kill(&mut self) {
        self.vmm.kill();
    }
}

impl crate::Watched for ConsoleVmm {
    fn ended(&mut self) -> Option<i32> {
        self.vmm.try_wait()
    }

    fn said(&self) -> String {
        self.both()
    }

    fn last_words(&mut self) -> String {
        self.vmm.stop_and_tell(crate::LAST_WORDS_GRACE);
        self.both()
    }
}

/// Where the line the shell printed as `want` ends in `out`: a line that is `want`, maybe
/// after the prompt (a line typed before the shell printed its prompt was echoed by the
/// tty then, so the answer follows the prompt on its line). The typed line itself never
/// matches: it says `$((N*1000))`, not the number.
fn answer_end(out: &str, want: &str) -> Option<usize> {
    let mut at = 0;
    for line in out.split_inclusive('\n') {
        at += line.len();
        if line.trim_end().trim_start_matches("# ") == want {
            return Some(at);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::answer_end;

    #[test]
    fn the_answer_is_found_after_the_prompt_or_alone_never_in_the_typed_line() {
        let seen = "status Necho settled-$((1*1000))\n\n# settled-1000\n# ";
        assert_eq!(answer_end(seen, "settled-1000"), Some(seen.len() - 2));
        assert_eq!(answer_end("x\nsettled-2000\n# ", "settled-2000"), Some(15));
        assert_eq!(
            answer_end("# echo settled-$((3*1000))\n", "settled-3000"),
            None
        );
        assert_eq!(answer_end("# settled-30000\n", "settled-3000"), None);
    }
}
