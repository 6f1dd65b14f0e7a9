//! The shared directory both VMMs of a pair can reach: the atomic test-and-set that
//! decides who owns the VM after a failure, the console stream, the status files.
//!
//! Ownership is a chain of epochs. The first primary creates `NAME.epoch-1.owner`. A pair
//! runs in the epoch its primary owns; when either side loses its peer in epoch E it tries
//! to create `NAME.epoch-(E+1).owner` with O_CREAT|O_EXCL. Exactly one creator succeeds
//! (the file system guarantees it), and the one that fails learns who won and halts. A VMM
//! that cannot reach the directory at all cannot win, so it halts too.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::deadline::{within, FILE_LIMIT};

/// Longest owner text read back (a holder's name is a line).
const MAX_HOLDER_LEN: u64 = 256;

/// Why the shared directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The `--shared-dir` path does not exist or is not a directory.
    #[error("shared directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    /// The VM name cannot be used in file names (see [`SharedDir::new`]).
    #[error("VM name '{0}' must be 1-64 characters of letters, digits, '-', '_' or '.' and not start with '.'")]
    BadName(String),
    /// A new VM's first primary found the name already owned in the directory.
    #[error("VM '{name}' already has an owner in {dir} (epoch {epoch}: {holder}); choose another --name or remove {dir}/{name}.*")]
    AlreadyOwned {
        /// The VM name.
        name: String,
        /// The shared directory.
        dir: PathBuf,
        /// The highest epoch that has an owner.
        epoch: u64,
        /// Who owns it, as its owner file says.
        holder: String,
    },
    /// The directory did not answer within the file deadline (a hung network file system).
    #[error("the shared directory did not answer within {limit:?} when asked to {what} {path}")]
    Timeout {
        /// The operation: "list" or "create".
        what: &'static str,
        /// The directory or file it was asked about.
        path: PathBuf,
        /// How long it was given.
        limit: std::time::Duration,
    },
    /// An operation on the directory or one of its files failed.
    #[error("cannot {what} {path}")]
    Io {
        /// The operation: "list", "create", "open", ...
        what: &'static str,
        /// The directory or file.
        path: PathBuf,
        /// The error of the operation.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SharedError + 'a {
    move |source| SharedError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The outcome of a test-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// We own this epoch now.
    Won(u64),
    /// Someone else created the epoch's owner file first.
    Lost {
        /// The epoch claimed.
        epoch: u64,
        /// Who owns it: the start of its owner file ("unknown" if unreadable).
        holder: String,
    },
}

/// One VM's files in the shared directory, named after the VM (`NAME.*`).
#[derive(Debug, Clone)]
pub struct SharedDir {
    dir: PathBuf,
    name: String,
}

impl SharedDir {
    /// The files of VM `name` in `dir`; the name must be 1-64 letters, digits, '-', '_' or
    /// '.', not starting with '.', and `dir` an existing directory.
    pub fn new(dir: &Path, name: &str) -> Result<Self, SharedError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(SharedError::BadName(name.to_owned()));
        }
        if !dir.is_dir() {
            return Err(SharedError::NotADirectory(dir.to_owned()));
        }
        Ok(Self {
            dir: dir.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner file of `epoch`, whose creation is that epoch's test-and-set.
    pub fn owner_path(&self, epoch: u64) -> PathBuf {
        self.dir.join(format!("{}.epoch-{epoch}.owner", self.name))
    }

    /// The console stream: every byte the guest wrote, at its offset, exactly once.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join(format!("{}.console", self.name))
    }

    /// The status file of the VMM tagged `tag`.
    pub fn status_path(&self, tag: &str) -> PathBuf {
        self.dir.join(format!("{}.{tag}.status", self.name))
    }

    /// Status files of every VMM of this VM.
    pub fn status_files(&self) -> Result<Vec<PathBuf>, SharedError> {
        let prefix = format!("{}.", self.name);
        let mut out: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(io("list", &self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".status"))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The highest epoch that has an owner, and who that is (within the directory's
    /// deadline).
    pub fn current_owner(&self) -> Result<Option<(u64, String)>, SharedError> {
        let me = self.clone();
        within(FILE_LIMIT, move || me.current_owner_now()).unwrap_or_else(|| {
            Err(SharedError::Timeout {
                what: "list",
                path: self.dir.clone(),
                limit: FILE_LIMIT,
            })
        })
    }

    fn current_owner_now(&self) -> Result<Option<(u64, String)>, SharedError> {
        let prefix = format!("{}.epoch-", self.name);
        let mut best: Option<u64> = None;
        for entry in std::fs::read_dir(&self.dir).map_err(io("list", &self.dir))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(epoch) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|n| n.strip_suffix(".owner"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            best = Some(best.map_or(epoch, |b| b.max(epoch)));
        }
        Ok(best.map(|e| (e, self.holder(e))))
    }

    /// Who wrote an owner file: its first bytes, read without following a link (a link
    /// planted in the directory must not make a root VMM read, or block on, another file).
    fn holder(&self, epoch: u64) -> String {
        let mut text = Vec::new();
        let read = open_no_follow(&self.owner_path(epoch))
            .and_then(|f| f.take(MAX_HOLDER_LEN).read_to_end(&mut text));
        match read {
            Ok(_) => String::from_utf8_lossy(&text).trim().to_owned(),
            Err(_) => "unknown".into(),
        }
    }

    /// The atomic test-and-set: create the owner file of `epoch` if nobody has. A
    /// directory that does not answer within its deadline is a claim not won.
    pub fn claim(&self, epoch: u64, who: &str) -> Result<Claim, SharedError> {
        let (me, who_owned) = (self.clone(), who.to_owned());
        within(FILE_LIMIT, move || me.claim_now(epoch, &who_owned)).unwrap_or_else(|| {
            Err(SharedError::Timeout {
                what: "create",
                path: self.owner_path(epoch),
                limit: FILE_LIMIT,
            })
        })
    }

    fn claim_now(&self, epoch: u64, who: &str) -> Result<Claim, SharedError> {
        let path = self.owner_path(epoch);
        let created = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        let mut file = match created {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(Claim::Lost {
                    epoch,
                    holder: self.holder(epoch),
                })
            }
            Err(e) => return Err(io("create", &path)(e)),
        };
        // The claim is made by the create itself; the text only says who made it. Failing
        // to write it must not undo the win: the other side has lost to this create, and
        // giving up too would leave nobody running.
        let text = format!("{who}\n");
        if let Err(e) = file
            .write_all(text.as_bytes())
            .and_then(|_| file.sync_all())
        {
            tracing::warn!(
                "won epoch {epoch} but could not record who in {}: {e}",
                path.display()
            );
        }
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(Claim::Won(epoch))
    }

    /// A new VM's first primary: epoch 1, only if the name is unused here. Starts an empty
    /// console stream.
    pub fn claim_first(&self, who: &str) -> Result<u64, SharedError> {
        if let Some((epoch, holder)) = self.current_owner()? {
            return Err(SharedError::AlreadyOwned {
                name: self.name.clone(),
                dir: self.dir.clone(),
                epoch,
                holder,
            });
        }
        match self.claim(1, who)? {
            Claim::Won(e) => {
                let console = self.console_path();
                let me = self.clone();
                within(FILE_LIMIT, move || {
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .custom_flags(libc::O_NOFOLLOW)
                        .open(me.console_path())
                })
                .unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()))
                .map_err(io("create", &console))?;
                Ok(e)
            }
            Claim::Lost { epoch, holder } => Err(SharedError::AlreadyOwned {
                name: self.name.clone(),
                dir: self.dir.clone(),
                epoch,
                holder,
            }),
        }
    }

    /// Open the console stream for writing at offsets (never truncating it).
    pub fn open_console(&self) -> Result<File, SharedError> {
        let path = self.console_path();
        let p = path.clone();
        within(FILE_LIMIT, move || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
        })
        .unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()))
        .map_err(io("open", &path))
    }
}

/// Open for reading without following a final symbolic link and without blocking on a
/// FIFO planted in its place.
pub fn open_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ftvm-shared-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn exactly_one_of_many_racers_wins_an_epoch() {
        let d = tempdir("race");
        let shared = SharedDir::new(&d, "vm").unwrap();
        assert_eq!(shared.claim_first("primary").unwrap(), 1);
        let winners: Vec<_> = (0..8)
            .map(|i| {
                let s = shared.clone();
                std::thread::spawn(move || s.claim(2, &format!("racer {i}")).unwrap())
            })
            .map(|t| t.join().unwrap())
            .filter(|c| matches!(c, Claim::Won(2)))
            .collect();
        assert_eq!(winners.len(), 1);
        match shared.claim(2, "late").unwrap() {
            Claim::Lost { epoch: 2, holder } => assert!(holder.starts_with("racer ")),
            other => panic!("{other:?}"),
        }
        assert_eq!(shared.current_owner().unwrap().unwrap().0, 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_used_name_is_refused_for_a_new_vm() {
        let d = tempdir("used");
        let shared = SharedDir::new(&d, "vm").unwrap();
        shared.claim_first("first").unwrap();
        let e = shared.claim_first("second").unwrap_err().to_string();
        assert!(
            e.contains("already has an owner") && e.contains("first"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_names_and_missing_directories_are_refused() {
        let d = tempdir("bad");
        for name in ["", ".hidden", "a/b", "x y", &"n".repeat(65)] {
            assert!(matches!(
                SharedDir::new(&d, name),
                Err(SharedError::BadName(_))
            ));
        }
        assert!(matches!(
            SharedDir::new(&d.join("missing"), "vm"),
            Err(SharedError::NotADirectory(_))
        ));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn planted_links_are_not_followed() {
        let d = tempdir("links");
        let shared = SharedDir::new(&d, "vm").unwrap();
        let target = d.join("target");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, shared.owner_path(2)).unwrap();
        std::os::unix::fs::symlink(&target, shared.console_path()).unwrap();
        // The planted owner link counts as taken (nobody wins through it) and is not read.
        match shared.claim(2, "me").unwrap() {
            Claim::Lost { epoch: 2, holder } => assert_eq!(holder, "unknown"),
            other => panic!("{other:?}"),
        }
        assert!(shared.open_console().is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unreachable_directory_cannot_be_won() {
        let d = tempdir("gone");
        let shared = SharedDir::new(&d, "vm").unwrap();
        std::fs::remove_dir_all(&d).unwrap();
        assert!(shared.claim(2, "me").is_err());
    }
}
