//! The FIFO data path of the persistent shell: its stdin and stdout are named pipes in a host directory that is
//! bind-mounted read-only into the container, so a step's bytes go from this process to `bash` through the kernel
//! and never through dockerd or the containerd shim (no attach stream is held per container).
//!
//! The directory is shared with hostile code, so the host side is written as if its entries could be swapped at
//! any moment (they cannot through a read-only mount, but a later mistake must not turn into a host file write):
//! - the io root (`$TMPDIR/swe-env-io-<uid>-<engine key>`, 0711; one per engine, see [`IoRoot::for_socket`]) must
//!   be a real directory owned by us (other local users could pre-plant a symlink in `/tmp`); the per-container
//!   directory (0711) is made with `mkdir` (never an existing one) and used through a directory descriptor from
//!   then on. 0711 keeps other host users and an unprivileged container user from listing it; root in the
//!   container (`CAP_DAC_OVERRIDE`) can list it, which is harmless: the names are unlinked once bash opened them,
//!   and the mount is read-only;
//! - the FIFO paths reach the shell through the exec's environment (not its argv: `/proc/<pid>/cmdline` is
//!   world-readable on the host, `environ` is not) and are unset before the interactive shell starts;
//! - each shell gets a new FIFO pair with 128-bit random names, made with `mknodat` (fails if the name exists),
//!   opened at set-up with `O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK` and checked with `fstat` (a FIFO, ours, the same
//!   inode for the two descriptors of one name); from then on only the descriptors are used — no path in the
//!   directory is reopened, stat'ed or followed — and the names are unlinked once `bash` has opened them;
//! - the directory is removed (`remove_dir_all`, which never follows symlinks) with its container.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// Where the io directory appears inside the container (read-only).
pub const MOUNT_POINT: &str = "/.swe-env-io";

/// Why the FIFO data path could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("FIFO data path: {what}: {source}")]
pub struct FifoError {
    what: String,
    #[source]
    source: io::Error,
}

fn fail(what: impl Into<String>) -> impl FnOnce(io::Error) -> FifoError {
    let what = what.into();
    move |source| FifoError { what, source }
}

fn refused(what: impl Into<String>, detail: &str) -> FifoError {
    FifoError {
        what: what.into(),
        source: io::Error::new(io::ErrorKind::PermissionDenied, detail.to_owned()),
    }
}

/// The io root of one engine for this user: `$TMPDIR/swe-env-io-<uid>-<engine key>`. Each engine has its own,
/// so a gc sweep of one engine never sees (and never removes) the directories of another engine's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRoot {
    path: PathBuf,
}

impl IoRoot {
    /// The io root of the engine listening on the unix socket `socket`. The key is a hash of the socket's
    /// canonical path (symlinks resolved, so `/var/run/docker.sock` and `/run/docker.sock` are one engine): two
    /// engines on one host necessarily listen on two sockets, and the path is known without asking the engine.
    pub fn for_socket(socket: &Path) -> Self {
        let canonical = std::fs::canonicalize(socket).unwrap_or_else(|_| socket.to_owned());
        Self::for_key(&format!(
            "{:016x}",
            fnv1a(canonical.as_os_str().as_encoded_bytes())
        ))
    }

    /// The io root named by `key` (a short hex string).
    pub fn for_key(key: &str) -> Self {
        Self {
            path: std::env::temp_dir().join(format!(
                "swe-env-io-{}-{key}",
                rustix::process::getuid().as_raw()
            )),
        }
    }

    /// Where it is on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it exists as a directory of ours (so a removal may have a directory to clean up).
    pub fn exists(&self) -> bool {
        std::fs::symlink_metadata(&self.path).is_ok_and(|meta| is_our_private_dir(&meta))
    }
}

/// FNV-1a, 64 bits: a hash that is the same in every build (unlike std's `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Whether `meta` is a real directory owned by us that nobody else can write to.
fn is_our_private_dir(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_dir()
        && meta.uid() == rustix::process::getuid().as_raw()
        && meta.mode() & 0o022 == 0
}

/// Creates the io root if needed and checks it (a real directory, ours, not writable by others); returns a
/// descriptor of it.
fn open_root(io_root: &IoRoot) -> Result<(PathBuf, OwnedFd), FifoError> {
    let root = io_root.path.clone();
    match std::fs::create_dir(&root) {
        Ok(()) => std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o711))
            .map_err(fail(format!("chmod {}", root.display())))?,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(fail(format!("mkdir {}", root.display()))(error)),
    }
    let meta =
        std::fs::symlink_metadata(&root).map_err(fail(format!("lstat {}", root.display())))?;
    if !is_our_private_dir(&meta) {
        return Err(refused(
            root.display().to_string(),
            "not a directory owned by this user and closed to others (a symlink, or planted by another user); \
             remove it or set TMPDIR elsewhere",
        ));
    }
    let fd = rustix::fs::open(
        &root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(format!("open {}", root.display()))(e.into()))?;
    check_owned(&fd, FileType::Directory, &root.display().to_string())?;
    Ok((root, fd))
}

/// Checks that `fd` is a `kind` owned by us.
fn check_owned(fd: impl AsFd, kind: FileType, what: &str) -> Result<rustix::fs::Stat, FifoError> {
    let stat = rustix::fs::fstat(fd).map_err(|e| fail(format!("fstat {what}"))(e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != kind
        || stat.st_uid != rustix::process::getuid().as_raw()
    {
        return Err(refused(
            what,
            "not what swe-env created (type or owner changed)",
        ));
    }
    Ok(stat)
}

/// A container name as a single path component (Docker names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The host directory of one container, bind-mounted read-only at [`MOUNT_POINT`].
#[derive(Debug)]
pub struct ContainerDir {
    root: IoRoot,
    path: PathBuf,
    name: String,
    dir: OwnedFd,
}

impl ContainerDir {
    /// Makes `<io root>/<container name>` (0711). Fails if it exists: a directory is never shared or reused.
    pub fn create(io_root: &IoRoot, container_name: &str) -> Result<Self, FifoError> {
        if !valid_component(container_name) {
            return Err(refused(
                container_name,
                "not usable as a directory name (expected a Docker container name)",
            ));
        }
        let (root, root_fd) = open_root(io_root)?;
        let path = root.join(container_name);
        let what = path.display().to_string();
        rustix::fs::mkdirat(&root_fd, container_name, Mode::from_raw_mode(0o700))
            .map_err(|e| fail(format!("mkdir {what}"))(e.into()))?;
        let dir = rustix::fs::openat(
            &root_fd,
            container_name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("open {what}"))(e.into()))?;
        check_owned(&dir, FileType::Directory, &what)?;
        // Traversable by the container's user (who may not be root), not listable.
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o711))
            .map_err(|e| fail(format!("chmod {what}"))(e.into()))?;
        Ok(Self {
            root: io_root.clone(),
            path,
            name: container_name.to_owned(),
            dir,
        })
    }

    /// The directory on the host (the bind mount's source).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container name it belongs to.
    pub fn container_name(&self) -> &str {
        &self.name
    }

    /// Makes and opens a new FIFO pair for one shell.
    pub fn new_pair(&self) -> Result<FifoPair, FifoError> {
        let nonce: u128 = rand::random();
        let in_name = format!("in-{nonce:032x}");
        let out_name = format!("out-{nonce:032x}");
        let made = (|| {
            let in_fifo = self.make_fifo(&in_name)?;
            let out_fifo = self.make_fifo(&out_name)?;
            // stdin: O_RDWR keeps a reader, so opening never fails (ENXIO) and bash's blocking open of it for
            // reading proceeds; the write-only descriptor is the one written to, so once the keeper is dropped a
            // dead shell is EPIPE rather than a full pipe that blocks.
            let in_keeper = self.open_fifo(&in_name, OFlags::RDWR, Some(&in_fifo))?;
            let in_writer = self.open_fifo(&in_name, OFlags::WRONLY, Some(&in_fifo))?;
            // stdout: read-only, plus a keeper writer so reads do not see EOF before bash opened it.
            let out_reader = self.open_fifo(&out_name, OFlags::RDONLY, Some(&out_fifo))?;
            let out_keeper = self.open_fifo(&out_name, OFlags::RDWR, Some(&out_fifo))?;
            Ok(FifoPair {
                in_path: format!("{MOUNT_POINT}/{in_name}"),
                out_path: format!("{MOUNT_POINT}/{out_name}"),
                in_name: in_name.clone(),
                out_name: out_name.clone(),
                input: in_writer,
                output: out_reader,
                keepers: vec![in_keeper, out_keeper],
            })
        })();
        if made.is_err() {
            self.unlink(&in_name);
            self.unlink(&out_name);
        }
        made
    }

    /// `mknodat` a FIFO (fails if the name exists); returns its identity from a descriptor opened right away.
    fn make_fifo(&self, name: &str) -> Result<(u64, u64), FifoError> {
        rustix::fs::mknodat(
            &self.dir,
            name,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .map_err(|e| fail(format!("mkfifo {name}"))(e.into()))?;
        let fd = self.open_fifo(name, OFlags::RDWR, None)?;
        // Explicitly (no umask): the image's user may not be root.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o666))
            .map_err(|e| fail(format!("chmod {name}"))(e.into()))?;
        let stat = check_owned(&fd, FileType::Fifo, name)?;
        Ok((stat.st_dev, stat.st_ino))
    }

    /// Opens `name` in the directory without following symlinks; checks it is our FIFO (the same inode as
    /// `expected`, when given).
    fn open_fifo(
        &self,
        name: &str,
        access: OFlags,
        expected: Option<&(u64, u64)>,
    ) -> Result<File, FifoError> {
        let fd = rustix::fs::openat(
            &self.dir,
            name,
            access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("open {name}"))(e.into()))?;
        let stat = check_owned(&fd, FileType::Fifo, name)?;
        if let Some(&(dev, ino)) = expected {
            if (stat.st_dev, stat.st_ino) != (dev, ino) {
                return Err(refused(name, "replaced during set-up"));
            }
        }
        Ok(File::from(fd))
    }

    /// Removes a name from the directory (never follows it; errors ignored: the directory goes with the container).
    pub fn unlink(&self, name: &str) {
        let _ = rustix::fs::unlinkat(&self.dir, name, rustix::fs::AtFlags::empty());
    }

    /// Removes the directory and everything in it.
    pub fn remove(&self) {
        remove_container_dir(&self.root, &self.name);
    }
}

/// A shell's FIFO pair, opened.
#[derive(Debug)]
pub struct FifoPair {
    /// Path of stdin inside the container.
    pub in_path: String,
    /// Path of stdout inside the container.
    pub out_path: String,
    /// Name of stdin in the directory.
    pub in_name: String,
    /// Name of stdout in the directory.
    pub out_name: String,
    /// Write end of the shell's stdin (write-only).
    pub input: File,
    /// Read end of the shell's stdout (read-only).
    pub output: File,
    /// Read-write descriptors held until the shell opened both ends; dropping them lets a dead shell show as
    /// EOF / EPIPE.
    pub keepers: Vec<File>,
}

/// Removes `<io root>/<container name>` if it is a real directory (symlinks are never followed; paths outside
/// the io root are never touched). Nothing to do is not an error.
pub fn remove_container_dir(io_root: &IoRoot, container_name: &str) {
    let name = container_name.trim_start_matches('/');
    if !valid_component(name) {
        return;
    }
    let root = &io_root.path;
    match std::fs::symlink_metadata(root) {
        Ok(meta) if is_our_private_dir(&meta) => {}
        _ => return,
    }
    let path = root.join(name);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_dir() => {
            if let Err(error) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), %error, "could not remove a sandbox io directory");
            }
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&path);
        }
        Err(_) => {}
    }
}

/// Container names of io directories not modified for `min_age` (candidates for a sweep: the caller checks that
/// their container is gone; a younger one may belong to a container being created right now).
pub fn idle_dir_names(io_root: &IoRoot, min_age: std::time::Duration) -> Vec<String> {
    if !io_root.exists() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(&io_root.path) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now();
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = std::fs::symlink_metadata(entry.path()).ok()?;
            let age = now.duration_since(meta.modified().ok()?).ok()?;
            let name = entry.file_name().into_string().ok()?;
            (age >= min_age && valid_component(&name)).then_some(name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_root() -> IoRoot {
        IoRoot::for_key("unit")
    }

    #[test]
    fn pairs_are_fifos_with_fresh_names_and_the_directory_goes_away() {
        let name = format!("swe-env-unit-{:08x}", rand::random::<u32>());
        let dir = ContainerDir::create(&test_root(), &name).unwrap();
        assert!(
            ContainerDir::create(&test_root(), &name).is_err(),
            "an existing directory is never reused"
        );
        let meta = std::fs::symlink_metadata(dir.path()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o711);
        let a = dir.new_pair().unwrap();
        let b = dir.new_pair().unwrap();
        assert_ne!(a.in_name, b.in_name);
        let fifo = std::fs::symlink_metadata(dir.path().join(&a.in_name)).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
        assert_eq!(fifo.mode() & 0o777, 0o666);
        dir.remove();
        assert!(!dir.path().exists());
    }

    #[test]
    fn engines_get_separate_io_roots() {
        let a = IoRoot::for_socket(Path::new("/run/one.sock"));
        let b = IoRoot::for_socket(Path::new("/run/two.sock"));
        assert_ne!(a, b);
        assert_eq!(a, IoRoot::for_socket(Path::new("/run/one.sock")));
        assert!(a.path().starts_with(std::env::temp_dir()));
    }

    #[test]
    fn a_symlink_or_a_file_at_the_directory_name_is_refused_and_left_alone() {
        let root = test_root();
        let _ = open_root(&root).unwrap();
        let canary = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(canary.path(), b"canary").unwrap();
        let name = format!("swe-env-unit-{:08x}", rand::random::<u32>());
        let path = root.path().join(&name);
        std::os::unix::fs::symlink(canary.path(), &path).unwrap();
        assert!(ContainerDir::create(&root, &name).is_err());
        remove_container_dir(&root, &name);
        assert_eq!(std::fs::read(canary.path()).unwrap(), b"canary");
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "the planted link itself is removed"
        );
        assert!(!valid_component("../etc"));
        remove_container_dir(&root, "../../etc");
    }

    /// A symlink to a canary, a regular file and a foreign FIFO planted at a FIFO's name: making or opening it
    /// fails, and nothing is followed or written.
    #[test]
    fn planted_entries_at_a_fifo_name_are_refused_and_never_written() {
        let name = format!("swe-env-unit-{:08x}", rand::random::<u32>());
        let dir = ContainerDir::create(&test_root(), &name).unwrap();
        let canary = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(canary.path(), b"canary").unwrap();
        let link = "in-link";
        std::os::unix::fs::symlink(canary.path(), dir.path().join(link)).unwrap();
        let file = "in-file";
        std::fs::write(dir.path().join(file), b"").unwrap();
        for planted in [link, file] {
            assert!(
                dir.make_fifo(planted).is_err(),
                "{planted}: mknodat over it"
            );
            for access in [OFlags::RDWR, OFlags::WRONLY, OFlags::RDONLY] {
                assert!(
                    dir.open_fifo(planted, access, None).is_err(),
                    "{planted}: opened with {access:?}"
                );
            }
        }
        // A FIFO replaced by another FIFO between making and opening: refused.
        let identity = dir.make_fifo("in-swapped").unwrap();
        // Held open so the replacement cannot get the same inode number.
        let _original = dir
            .open_fifo("in-swapped", OFlags::RDWR, Some(&identity))
            .unwrap();
        dir.make_fifo("in-other").unwrap();
        std::fs::rename(dir.path().join("in-other"), dir.path().join("in-swapped")).unwrap();
        let replaced = dir
            .open_fifo("in-swapped", OFlags::RDWR, Some(&identity))
            .unwrap_err();
        assert!(replaced.to_string().contains("replaced"), "{replaced}");
        assert_eq!(std::fs::read(canary.path()).unwrap(), b"canary");
        assert_eq!(std::fs::read(dir.path().join(file)).unwrap(), b"");
        assert!(std::fs::symlink_metadata(dir.path().join(link))
            .unwrap()
            .file_type()
            .is_symlink());
        dir.remove();
    }
}
