//! The pair's channel key: 32 random bytes both VMMs hold, written as 64 hexadecimal
//! digits in a file only its owner may read (`ftvm keygen`, then `--key-file FILE` on
//! both VMMs). `--insecure` runs a pair on a publicly known key instead: the channel is
//! still encrypted, but anyone can complete its handshake.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::deadline::FILE_LIMIT;

/// Bytes in a channel key.
pub const KEY_LEN: usize = 32;
/// The digits, and a trailing newline or two of slack.
const MAX_FILE_LEN: u64 = 2 * KEY_LEN as u64 + 2;

/// Why a channel key could not be read, made or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No file at the key's path.
    #[error(
        "no channel key at {0} (make one with 'ftvm keygen FILE' and give both VMMs the same)"
    )]
    Missing(PathBuf),
    /// An I/O operation on the key file failed.
    #[error("cannot {what} the channel key {path}")]
    Io {
        /// The operation: "open", "inspect", "read", "create", "write", ...
        what: &'static str,
        /// The key file (or "(standard output)").
        path: PathBuf,
        /// The error of the operation.
        #[source]
        source: std::io::Error,
    },
    /// The key's path is a symbolic link or not a regular file.
    #[error("the channel key {0} is not a regular file (symbolic links are refused)")]
    NotAFile(PathBuf),
    /// The key file may be read or written by its group or others.
    #[error("the channel key {path} may be read by others (mode {mode:03o}): chmod 600 it")]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The file does not hold exactly 64 hexadecimal digits.
    #[error("the channel key {0} is not 64 hexadecimal digits")]
    Format(PathBuf),
    /// The operating system gave no random bytes for a new key.
    #[error("no random bytes for a new channel key")]
    Random(#[source] getrandom::Error),
    /// The file system did not finish reading or creating the key in time.
    #[error("the file system did not answer within {limit:?} for the channel key {path}")]
    Timeout {
        /// The key file.
        path: PathBuf,
        /// How long it was given.
        limit: Duration,
    },
}

/// The pre-shared key. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ChannelKey([u8; KEY_LEN]);

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(..)")
    }
}

impl ChannelKey {
    /// A key of these bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key's bytes.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A fresh key from the operating system's random source.
    pub fn random() -> Result<Self, KeyError> {
        let mut k = [0u8; KEY_LEN];
        getrandom::fill(&mut k).map_err(KeyError::Random)?;
        Ok(Self(k))
    }

    /// Parse the file's text: 64 hexadecimal digits, surrounding white space allowed.
    fn parse(text: &[u8], path: &Path) -> Result<Self, KeyError> {
        let digits = text.trim_ascii();
        if digits.len() != 2 * KEY_LEN {
            return Err(KeyError::Format(path.to_owned()));
        }
        let mut k = [0u8; KEY_LEN];
        for (byte, pair) in k.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| KeyError::Format(path.to_owned()))?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| KeyError::Format(path.to_owned()))?;
        }
        Ok(Self(k))
    }

    fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Read the key at `path`: a regular file (not a link), readable by its owner only.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let p = path.to_owned();
        within_limit(path, move || Self::load_now(&p))
    }

    fn load_now(path: &Path) -> Result<Self, KeyError> {
        let io = |what| {
            move |source: std::io::Error| KeyError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => KeyError::Missing(path.to_owned()),
                // O_NOFOLLOW on a link.
                _ if e.raw_os_error() == Some(libc::ELOOP) => KeyError::NotAFile(path.to_owned()),
                _ => io("open")(e),
            })?;
        let meta = file.metadata().map_err(io("inspect"))?;
        if !meta.file_type().is_file() {
            return Err(KeyError::NotAFile(path.to_owned()));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut text)
            .map_err(io("read"))?;
        Self::parse(&text, path)
    }

    /// Write a new random key to `path`, which must not exist (mode 0600).
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let p = path.to_owned();
        within_limit(path, move || Self::create_now(&p))
    }

    fn create_now(path: &Path) -> Result<Self, KeyError> {
        let key = Self::random()?;
        let io = |what| {
            move |source: std::io::Error| KeyError::Io {
                what,
                path: path.to_owned(),
                source,
            }
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io("create"))?;
        let written = file
            .write_all(format!("{}\n", key.hex()).as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            // A half-written key would refuse every backup: leave no file at all.
            let _ = std::fs::remove_file(path);
            return Err(io("write")(e));
        }
        Ok(key)
    }

    /// The key of `--insecure` pairs: known to everyone, so it authenticates nobody.
    pub fn public() -> Self {
        Self([0; KEY_LEN])
    }

    /// Print a key (`ftvm keygen` without a file). If standard output is a regular file
    /// (`ftvm keygen > FILE`), make it private first: the loader refuses keys others
    /// could read.
    pub fn write_to_stdout(&self) -> Result<(), KeyError> {
        let stdout = Path::new("(standard output)");
        let io = |what| {
            move |source: std::io::Error| KeyError::Io {
                what,
                path: stdout.to_owned(),
                source,
            }
        };
        let out = std::io::stdout();
        let mut lock = out.lock();
        let file = std::fs::File::from(
            std::os::fd::AsFd::as_fd(&lock)
                .try_clone_to_owned()
                .map_err(io("inspect"))?,
        );
        if file
            .metadata()
            .map_err(io("inspect"))?
            .file_type()
            .is_file()
        {
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(io("make private"))?;
        }
        writeln!(lock, "{}", self.hex()).map_err(io("write"))?;
        lock.flush().map_err(io("write"))
    }
}

/// Run a file operation with the shared directory's deadline.
fn within_limit<T: Send + 'static>(
    path: &Path,
    op: impl FnOnce() -> Result<T, KeyError> + Send + 'static,
) -> Result<T, KeyError> {
    super::deadline::within(FILE_LIMIT, op).unwrap_or_else(|| {
        Err(KeyError::Timeout {
            path: path.to_owned(),
            limit: FILE_LIMIT,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ftvm-key-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_created_key_loads_back_and_is_private() {
        let d = dir("roundtrip");
        let p = d.join("vm.key");
        let k = ChannelKey::create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ChannelKey::load(&p).unwrap(), k);
        assert!(matches!(ChannelKey::create(&p), Err(KeyError::Io { .. })));
        assert_ne!(ChannelKey::random().unwrap(), ChannelKey::random().unwrap());
        assert_eq!(
            format!("{:?}", ChannelKey::random().unwrap()),
            "ChannelKey(..)"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_key_files_are_refused_with_the_reason() {
        let d = dir("bad");
        let missing = d.join("none.key");
        assert!(matches!(
            ChannelKey::load(&missing),
            Err(KeyError::Missing(_))
        ));

        let write = |name: &str, text: &str, mode: u32| {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        let good = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        assert!(ChannelKey::load(&write("ok.key", good, 0o600)).is_ok());
        let open = write("open.key", good, 0o644);
        assert!(matches!(
            ChannelKey::load(&open),
            Err(KeyError::Exposed { mode: 0o644, .. })
        ));
        let short = write("short.key", "0011", 0o600);
        assert!(matches!(ChannelKey::load(&short), Err(KeyError::Format(_))));
        let not_hex = write("nothex.key", &"zz".repeat(32), 0o600);
        assert!(matches!(
            ChannelKey::load(&not_hex),
            Err(KeyError::Format(_))
        ));
        let long = write("long.key", &"ab".repeat(10_000), 0o600);
        assert!(matches!(ChannelKey::load(&long), Err(KeyError::Format(_))));
        let link = d.join("link.key");
        std::os::unix::fs::symlink(d.join("ok.key"), &link).unwrap();
        assert!(matches!(
            ChannelKey::load(&link),
            Err(KeyError::NotAFile(_))
        ));
        assert!(matches!(
            ChannelKey::load(&d),
            Err(KeyError::NotAFile(_)) | Err(KeyError::Exposed { .. })
        ));
        let _ = std::fs::remove_dir_all(&d);
    }
}
