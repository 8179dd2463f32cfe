//! The FIFO data path: the shell's stdio on named pipes in a host directory bind-mounted read-only into the
//! container. The directory is shared with hostile code: nothing in it may ever make the host write a host file,
//! its bytes must not pass through dockerd, and it goes away with its container.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swe_env_sandbox::{fifo, DataPath, DockerSandbox, SandboxConfig};

use crate::common::{base_config, base_sandbox, engine, gc_report, removed_ids, spawn_shell};

const T: Duration = Duration::from_secs(30);

fn config(data_path: DataPath) -> SandboxConfig {
    SandboxConfig {
        data_path,
        ..base_config()
    }
}

async fn run(sandbox: &DockerSandbox, command: &str) -> String {
    let out = sandbox.run_command(command, T).await.unwrap();
    String::from_utf8_lossy(&out.output).into_owned()
}

/// A host file nobody may touch: its content and mtime.
struct Canary {
    _dir: tempfile::TempDir,
    path: PathBuf,
    mtime: (i64, i64),
}

impl Canary {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("canary");
        std::fs::write(&path, b"host canary\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        Self {
            mtime: (meta.mtime(), meta.mtime_nsec()),
            path,
            _dir: dir,
        }
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read(&self.path).unwrap(), b"host canary\n");
        let meta = std::fs::metadata(&self.path).unwrap();
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            self.mtime,
            "canary mtime"
        );
        assert_eq!(meta.len(), 12);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_cannot_remove_move_or_replace_the_io_mount_from_inside() {
    let canary = Canary::new();
    let sandbox = base_sandbox("fifo-inside", config(DataPath::Auto)).await;
    assert_eq!(
        sandbox.data_path(),
        DataPath::Fifo,
        "a local engine gets the FIFO path"
    );
    let io_dir = sandbox.io_dir().unwrap().to_owned();
    let target = canary.path.display().to_string();
    // The agent learns the names from its own shell's descriptors (the directory is not listable).
    let script = format!(
        r#"ls -la /.swe-env-io/ 2>&1 | sed 's/^/LS /'
names="$(readlink /proc/$$/fd/* | grep swe-env-io | sed 's/ (deleted)$//') /.swe-env-io/in-x /.swe-env-io"
for f in $names; do
  echo "try $f"
  rm -r "$f" 2>/dev/null && echo "BROKEN rm $f"
  mv -f "$f" "$f.moved" 2>/dev/null && echo "BROKEN mv $f"
  ln -sfn /etc/passwd "$f" 2>/dev/null && echo "BROKEN ln $f"
  ln -sfn {target} "$f" 2>/dev/null && echo "BROKEN ln-canary $f"
done
mkfifo /.swe-env-io/new 2>/dev/null && echo "BROKEN mkfifo"
touch /.swe-env-io/new 2>/dev/null && echo "BROKEN touch"
chmod 777 /.swe-env-io 2>/dev/null && echo "BROKEN chmod"
umount -l /.swe-env-io 2>/dev/null && echo "BROKEN umount"
mount -o remount,rw /.swe-env-io 2>/dev/null && echo "BROKEN remount"
echo done"#
    );
    let out = run(&sandbox, &script).await;
    assert!(out.contains("try /.swe-env-io/in-"), "{out}");
    assert!(out.contains("try /.swe-env-io/out-"), "{out}");
    assert!(out.ends_with("done\n"), "{out}");
    assert!(
        !out.contains("BROKEN"),
        "the io mount changed from inside:\n{out}"
    );
    assert!(
        !out.contains("LS p"),
        "the FIFO names must not be listable:\n{out}"
    );
    // The shell still works, on the same session, and the host directory is as swe-env left it.
    let again = sandbox.run_command("echo alive; echo $$", T).await.unwrap();
    assert!(!again.restarted);
    assert!(String::from_utf8_lossy(&again.output).starts_with("alive\n"));
    let entries: Vec<_> = std::fs::read_dir(&io_dir).unwrap().collect();
    assert!(
        entries.is_empty(),
        "the FIFO names are unlinked once bash opened them: {entries:?}"
    );
    assert_eq!(
        std::fs::symlink_metadata(&io_dir).unwrap().mode() & 0o7777,
        0o711
    );
    canary.assert_untouched();
    sandbox.remove().await.unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Swap {
    /// Replace every FIFO by a symlink to the canary.
    Symlink,
    /// Replace every FIFO by an empty regular file.
    RegularFile,
}

/// A host-side attacker with write access to the io directory (as if the mount were writable): polls it and
/// replaces every FIFO that appears (a new shell's pair, between `mknodat` and the unlink after start-up) by a
/// symlink to the canary or a regular file, atomically (rename over it); also plants symlinks under guessable
/// names. Returns how many FIFOs it replaced.
fn spawn_swapper(
    dir: PathBuf,
    canary: PathBuf,
    swap: Swap,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        for guess in ["in-0", "out-0", &format!("in-{:032x}", 0), "in", "out"] {
            let _ = std::os::unix::fs::symlink(&canary, dir.join(guess));
        }
        let mut swapped = 0;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                break;
            };
            for entry in entries.flatten() {
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if !kind.is_fifo() {
                    continue;
                }
                n += 1;
                let tmp = dir.join(format!(".swap-{n}"));
                let made = match swap {
                    Swap::Symlink => std::os::unix::fs::symlink(&canary, &tmp),
                    Swap::RegularFile => std::fs::write(&tmp, b""),
                };
                if made.is_ok() && std::fs::rename(&tmp, entry.path()).is_ok() {
                    swapped += 1;
                }
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        swapped
    })
}

/// Regular files the swapper left: the host must never have written into them.
fn assert_swapped_files_untouched(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = std::fs::symlink_metadata(entry.path()).unwrap();
        if meta.file_type().is_file() {
            assert_eq!(meta.len(), 0, "{:?} was written to", entry.path());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifos_swapped_on_the_host_side_are_never_followed_or_written() {
    let canary = Canary::new();
    let sandbox = base_sandbox("fifo-swap", config(DataPath::Fifo)).await;
    let io_dir = sandbox.io_dir().unwrap().to_owned();
    for swap in [Swap::Symlink, Swap::RegularFile] {
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = spawn_swapper(io_dir.clone(), canary.path.clone(), swap, stop.clone());
        // Each `kill -9 $$` makes the sandbox start a new shell with a new FIFO pair, which the swapper races.
        let failures = AtomicUsize::new(0);
        for _ in 0..4 {
            let _ = sandbox.run_command("kill -9 $$", T).await;
            match sandbox.run_command("echo alive", T).await {
                Ok(out) if out.output == b"alive\n" => {}
                // Losing the race is allowed to fail a command (never to touch the host).
                _ => {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            canary.assert_untouched();
        }
        stop.store(true, Ordering::Relaxed);
        let swapped = swapper.join().unwrap();
        assert!(
            swapped > 0,
            "{swap:?}: the swapper never caught a FIFO; the test proves nothing"
        );
        let failed = failures.load(Ordering::Relaxed);
        assert!(
            failed <= swapped,
            "{swap:?}: {failed} commands failed but only {swapped} FIFOs were swapped: failures not caused by the race"
        );
        assert_swapped_files_untouched(&io_dir);
        // Without the attacker, the next command works, on a shell whose stdin and stdout are FIFOs of the mount
        // (not a swapped-in file or link).
        let out = sandbox.run_command("echo alive", T).await.unwrap();
        assert_eq!(out.output, b"alive\n", "{swap:?}");
        let fds = run(
            &sandbox,
            r#"for f in /proc/$$/fd/*; do l=$(readlink $f); case $l in /.swe-env-io/*) echo "$(stat -L -c %F $f) $l";; esac; done"#,
        )
        .await;
        assert!(
            fds.lines()
                .all(|line| line.starts_with("fifo /.swe-env-io/")),
            "{swap:?}: {fds}"
        );
        assert!(fds.contains("fifo /.swe-env-io/in-"), "{swap:?}: {fds}");
        assert!(fds.contains("fifo /.swe-env-io/out-"), "{swap:?}: {fds}");
        canary.assert_untouched();
        eprintln!(
            "{swap:?}: {swapped} FIFOs swapped, {} commands failed while racing",
            failures.load(Ordering::Relaxed)
        );
    }
    // The planted links are still links, to the untouched canary.
    let link = std::fs::symlink_metadata(io_dir.join("in-0")).unwrap();
    assert!(link.file_type().is_symlink());
    canary.assert_untouched();
    sandbox.remove().await.unwrap();
    assert!(std::fs::symlink_metadata(&io_dir).is_err());
    canary.assert_untouched();
}

/// `rchar + wchar` of a process (bytes it read and wrote through any descriptor).
fn io_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    text.lines()
        .filter(|line| line.starts_with("rchar:") || line.starts_with("wchar:"))
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The dockerd serving the default socket.
fn dockerd_pid() -> u32 {
    if let Ok(text) = std::fs::read_to_string("/var/run/docker.pid") {
        if let Ok(pid) = text.trim().parse() {
            return pid;
        }
    }
    let out = Command::new("pidof").arg("dockerd").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("dockerd pid")
}

/// The containerd shim whose command line names `container_id`.
fn shim_pid(container_id: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("containerd-shim") && cmdline.contains(container_id) {
            return Some(pid);
        }
    }
    None
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes dockerd (and the container's shim, when found) read + wrote while 10 MB of output came back, and whether
/// it arrived intact.
async fn relay_bytes_for_10_mb(sandbox: &DockerSandbox) -> (u64, u64) {
    let size = 10_000_000;
    let prepared = run(
        sandbox,
        &format!("head -c {size} /dev/urandom > /tmp/blob && sha256sum /tmp/blob"),
    )
    .await;
    let expected = prepared.split_whitespace().next().unwrap().to_owned();
    let dockerd = dockerd_pid();
    let shim = shim_pid(sandbox.id());
    let (d0, s0) = (io_bytes(dockerd), shim.map_or(0, io_bytes));
    let out = sandbox.run_command("cat /tmp/blob", T).await.unwrap();
    let (d1, s1) = (io_bytes(dockerd), shim.map_or(0, io_bytes));
    assert_eq!(out.output.len(), size);
    assert_eq!(sha256(&out.output), expected, "10 MB arrived intact");
    (d1 - d0, s1 - s0)
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_bytes_bypass_dockerd_and_no_stream_is_held_per_sandbox() {
    let big = |data_path| SandboxConfig {
        max_output_bytes: 16 << 20,
        ..config(data_path)
    };
    let fifo_box = base_sandbox("fifo-bytes", big(DataPath::Fifo)).await;
    let attach_box = base_sandbox("attach-bytes", big(DataPath::Attach)).await;
    assert_eq!(attach_box.data_path(), DataPath::Attach);
    // Interleaved: the attach path is the positive control (the counters do see relayed bytes). Other tests may
    // use the engine meanwhile (dockerd's counters are global: 1–2 MB of background traffic per round was seen
    // with the suite running), so dockerd is judged on the quietest of 5 rounds against 5 MB — a quarter of the
    // 20 MB it relays for this output on attach; the shim is this container's own and must move nothing.
    let mut quietest_fifo_dockerd = u64::MAX;
    for _ in 0..5 {
        let (fifo_dockerd, fifo_shim) = relay_bytes_for_10_mb(&fifo_box).await;
        let (attach_dockerd, attach_shim) = relay_bytes_for_10_mb(&attach_box).await;
        eprintln!("10 MB of output: dockerd moved {fifo_dockerd} B on the FIFO path vs {attach_dockerd} B on attach; shim {fifo_shim} vs {attach_shim}");
        assert!(
            attach_dockerd >= 10_000_000 && attach_shim >= 10_000_000,
            "positive control: attach passes through dockerd and the shim ({attach_dockerd}, {attach_shim})"
        );
        assert!(
            fifo_shim < 100_000,
            "FIFO path: the shim moved {fifo_shim} bytes"
        );
        quietest_fifo_dockerd = quietest_fifo_dockerd.min(fifo_dockerd);
        if quietest_fifo_dockerd < 5_000_000 {
            break;
        }
    }
    assert!(
        quietest_fifo_dockerd < 5_000_000,
        "FIFO path: dockerd moved {quietest_fifo_dockerd} bytes in the quietest round"
    );
    fifo_box.remove().await.unwrap();
    attach_box.remove().await.unwrap();

    // Connections to the engine held by this process (nextest runs each test in its own process).
    let sockets = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count()
    };
    let mut held = Vec::new();
    for data_path in [DataPath::Fifo, DataPath::Attach] {
        let engine = engine().await;
        let before = sockets();
        let mut boxes = Vec::new();
        for i in 0..20 {
            let id = crate::common::unique_id(&format!("fifo-conn-{i}"));
            let sandbox = engine
                .create_sandbox(crate::common::BASE_IMAGE, &id, config(data_path))
                .await
                .unwrap();
            assert_eq!(run(&sandbox, "echo ok").await, "ok\n");
            boxes.push(sandbox);
        }
        let after = sockets();
        held.push(after.saturating_sub(before));
        for sandbox in boxes {
            sandbox.remove().await.unwrap();
        }
    }
    eprintln!(
        "sockets held for 20 live sandboxes: FIFO {}, attach {}",
        held[0], held[1]
    );
    assert!(
        held[1] >= 15,
        "positive control: one attach stream each (one pooled connection may be reused)"
    );
    assert!(
        held[0] <= 4,
        "FIFO path holds no stream per sandbox: {}",
        held[0]
    );
}

/// The io root of the default engine (the one the tests and `swe-env gc` use).
fn io_root() -> fifo::IoRoot {
    let endpoint = swe_env_sandbox::EngineEndpoint::from_env().unwrap();
    match endpoint {
        swe_env_sandbox::EngineEndpoint::Unix { path } => fifo::IoRoot::for_socket(&path),
        other => panic!("these tests need a local engine, not {other}"),
    }
}

fn io_dir_of(name: &str) -> PathBuf {
    io_root().path().join(name.trim_start_matches('/'))
}

fn set_back_an_hour(path: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

fn container_name(id: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", "{{.Name}}", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn wait_gone(path: &Path) -> bool {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if std::fs::symlink_metadata(path).is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn io_directories_go_with_their_containers_on_remove_drop_and_gc() {
    // remove()
    let sandbox = base_sandbox("fifo-rm", config(DataPath::Fifo)).await;
    let dir = sandbox.io_dir().unwrap().to_owned();
    assert!(dir.is_dir());
    sandbox.remove().await.unwrap();
    assert!(
        std::fs::symlink_metadata(&dir).is_err(),
        "left after remove(): {dir:?}"
    );

    // drop
    let sandbox = base_sandbox("fifo-drop", config(DataPath::Fifo)).await;
    let dir = sandbox.io_dir().unwrap().to_owned();
    drop(sandbox);
    assert!(wait_gone(&dir).await, "left after drop: {dir:?}");

    // A live sandbox whose directory was idle for an hour (no shell restart since) is kept: its container exists.
    let live = base_sandbox("fifo-live-idle", config(DataPath::Fifo)).await;
    let live_dir = live.io_dir().unwrap().to_owned();
    assert!(live_dir.starts_with(io_root().path()), "{live_dir:?}");
    set_back_an_hour(&live_dir);
    // A directory of another engine's container (another local dockerd, as tests/it/remote_engine starts), idle
    // for an hour: this engine does not know its container, and must not touch it.
    let other_root = fifo::IoRoot::for_socket(Path::new("/nonexistent/other-engine.sock"));
    let other_name = crate::common::unique_id("fifo-other-engine");
    let other = fifo::ContainerDir::create(&other_root, &other_name).unwrap();
    set_back_an_hour(other.path());

    // gc of a SIGKILLed owner's container (`swe-env shell` in a child process)
    let (mut child, id) = spawn_shell(Vec::new());
    let dir = io_dir_of(&container_name(&id));
    assert!(
        dir.is_dir(),
        "swe-env shell uses the FIFO path on a local engine: {dir:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(dir.is_dir(), "still there after SIGKILL");
    // A directory whose container is gone (its owner died between the two removals) and that was idle for long
    // is swept by gc; a young one may be a creation in flight and is kept.
    let stale = io_dir_of(&crate::common::unique_id("fifo-stale"));
    let young = io_dir_of(&crate::common::unique_id("fifo-young"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::create_dir(&young).unwrap();
    set_back_an_hour(&stale);
    let report = gc_report(&[], Vec::new());
    assert!(removed_ids(&report).contains(&id.as_str()), "{report}");
    assert!(
        std::fs::symlink_metadata(&dir).is_err(),
        "left after gc: {dir:?}"
    );
    assert!(
        std::fs::symlink_metadata(&stale).is_err(),
        "an idle directory without a container is swept: {stale:?}"
    );
    assert!(young.is_dir(), "a young directory is kept");
    std::fs::remove_dir(&young).unwrap();
    assert!(
        live_dir.is_dir(),
        "the io directory of a live container is kept however idle"
    );
    assert_eq!(run(&live, "kill -9 $$; echo x").await, "");
    assert_eq!(
        run(&live, "echo alive").await,
        "alive\n",
        "a live sandbox's shell restarts after gc"
    );
    assert!(
        other.path().is_dir(),
        "another engine's io directory is kept"
    );
    other.remove();
    let _ = std::fs::remove_dir(other_root.path());
    live.remove().await.unwrap();
}

/// The attack of review finding 1: a background job fills the shell's stdin FIFO while the shell is stopped, so
/// nothing reads it. The timeout's recovery write must not block forever (holding the session lock: close would
/// hang and the container leak); the shell is replaced.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_shell_with_a_full_stdin_does_not_hang_the_step_or_close() {
    let sandbox = base_sandbox("fifo-stopped", config(DataPath::Fifo)).await;
    let attack = r#"for f in /proc/$$/fd/*; do case "$(readlink $f)" in /.swe-env-io/in-*) break;; esac; done
f=${f##*/}; cat /dev/zero > /proc/$$/fd/$f & sleep 1; kill -STOP $$"#;
    let timeout = Duration::from_secs(3);
    let started = Instant::now();
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        sandbox.run_command(attack, timeout),
    )
    .await
    .expect("the step hung on a write to a stopped shell")
    .unwrap();
    let took = started.elapsed();
    eprintln!("attacked step returned after {took:?}: {out:?}");
    assert!(out.timed_out && out.restarted, "{out:?}");
    assert!(
        took < timeout + Duration::from_secs(10),
        "the step took {took:?}"
    );
    let next = tokio::time::timeout(Duration::from_secs(60), sandbox.run_command("echo ok", T))
        .await
        .expect("the next step hung")
        .unwrap();
    assert_eq!(next.output, b"ok\n");

    // A background job that stops the shell (and fills its stdin) between steps: the next step's first write
    // must not hang either.
    let between = r#"for f in /proc/$$/fd/*; do case "$(readlink $f)" in /.swe-env-io/in-*) break;; esac; done
f=${f##*/}; (sleep 1; cat /dev/zero > /proc/$$/fd/$f) >/dev/null 2>&1 & (sleep 1; kill -STOP $$) >/dev/null 2>&1 &
echo armed"#;
    let armed = run(&sandbox, between).await;
    assert!(armed.ends_with("armed\n"), "{armed}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(90), sandbox.run_command("echo late", T))
        .await
        .expect("the next step's write hung on a stopped shell")
        .unwrap();
    let took = started.elapsed();
    eprintln!("step after a stopped shell returned after {took:?}: {out:?}");
    assert!(out.restarted, "{out:?}");
    assert!(took < Duration::from_secs(25), "took {took:?}");
    assert_eq!(run(&sandbox, "echo ok").await, "ok\n");
    tokio::time::timeout(Duration::from_secs(60), sandbox.remove())
        .await
        .expect("close hung")
        .unwrap();
}

/// Bounded writes must not cut a legitimate large command: 10 MB of script (far more than a pipe holds) that
/// bash reads at its own pace goes through whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_ten_megabyte_command_script_goes_through_whole() {
    let sandbox = base_sandbox("fifo-10mb", config(DataPath::Fifo)).await;
    let line = format!("{}\n", "y".repeat(99));
    let lines = 100_000;
    let script = format!("cat <<'EOF' | wc -c\n{}EOF", line.repeat(lines));
    assert!(script.len() > 10_000_000);
    let started = Instant::now();
    let out = sandbox
        .run_command(&script, Duration::from_secs(300))
        .await
        .unwrap();
    eprintln!("10 MB script ran in {:?}", started.elapsed());
    assert!(!out.restarted && !out.timed_out, "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.output),
        format!("{}\n", 100 * lines)
    );
    sandbox.remove().await.unwrap();
}

/// Finding 3: the FIFO names are never on a command line (world-readable on the host through
/// `/proc/<pid>/cmdline`), and the agent's shell does not inherit them in its environment.
#[tokio::test(flavor = "multi_thread")]
async fn the_fifo_names_are_not_on_the_shells_command_line_or_in_its_environment() {
    let sandbox = base_sandbox("fifo-argv", config(DataPath::Fifo)).await;
    let name = run(&sandbox, "readlink /proc/$$/fd/* | grep /in-").await;
    let name = name.trim().trim_end_matches(" (deleted)").to_owned();
    assert!(name.starts_with("/.swe-env-io/in-"), "{name}");
    let hex = name.trim_start_matches("/.swe-env-io/in-").to_owned();
    // The shell's exec as the engine records it (what its process had on its command line).
    let ids = Command::new("docker")
        .args(["inspect", "-f", "{{json .ExecIDs}}", sandbox.id()])
        .output()
        .unwrap();
    let ids: Vec<String> = serde_json::from_slice(&ids.stdout).unwrap();
    assert!(!ids.is_empty(), "the shell's exec is running");
    let mut seen_shell = false;
    for id in ids {
        let inspect = Command::new("curl")
            .args(["-sS", "--unix-socket", "/var/run/docker.sock"])
            .arg(format!("http://engine/exec/{id}/json"))
            .output()
            .unwrap();
        let inspect: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        let process = inspect["ProcessConfig"].to_string();
        eprintln!("exec {id}: {process}");
        seen_shell |= process.contains("SWE_ENV_IN");
        assert!(
            !process.contains(&hex) && !process.contains("/.swe-env-io/"),
            "a FIFO name is on the exec's command line: {process}"
        );
    }
    assert!(
        seen_shell,
        "positive control: the shell's exec was inspected"
    );
    let env = run(
        &sandbox,
        "tr '\\0' '\\n' < /proc/$$/environ | grep -c SWE_ENV_ || true",
    )
    .await;
    assert_eq!(env, "0\n", "the agent's shell inherits no FIFO path");
    sandbox.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shell_restart_uses_a_new_pair_and_a_dead_shell_is_noticed_at_once() {
    let sandbox = base_sandbox("fifo-restart", config(DataPath::Fifo)).await;
    let first = run(&sandbox, "readlink /proc/$$/fd/* | grep /in-").await;
    let started = Instant::now();
    let killed = sandbox.run_command("kill -9 $$", T).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead shell reads as EOF, not a timeout"
    );
    assert!(killed.restarted);
    let second = run(&sandbox, "readlink /proc/$$/fd/* | grep /in-").await;
    assert!(first.starts_with("/.swe-env-io/in-"), "{first}");
    assert!(second.starts_with("/.swe-env-io/in-"), "{second}");
    assert_ne!(first, second, "a restart makes a new FIFO pair");
    // A command larger than the pipe buffer goes through whole.
    let long = format!("echo {} | wc -c", "x".repeat(300_000));
    assert_eq!(run(&sandbox, &long).await, "300001\n");
    sandbox.remove().await.unwrap();
}

/// A `tcp://` engine (the local one behind a forwarder): it cannot see our directories, so `auto` is attach and
/// an explicit `fifo` is refused with a clear error.
#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_engine_gets_the_attach_path_and_an_explicit_fifo_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    let endpoint = swe_env_sandbox::EngineEndpoint::from_lookup(|name| {
        (name == "DOCKER_HOST").then(|| format!("tcp://127.0.0.1:{port}").into())
    })
    .unwrap();
    let engine = swe_env_sandbox::DockerEngine::connect_to(&endpoint, Duration::from_secs(30))
        .await
        .unwrap();
    let id = crate::common::unique_id("fifo-tcp");
    let sandbox = engine
        .create_sandbox(crate::common::BASE_IMAGE, &id, config(DataPath::Auto))
        .await
        .unwrap();
    assert_eq!(sandbox.data_path(), DataPath::Attach);
    assert!(sandbox.io_dir().is_none());
    assert_eq!(run(&sandbox, "echo ok").await, "ok\n");
    assert!(
        run(&sandbox, "test -e /.swe-env-io || echo none").await == "none\n",
        "no io mount on the attach path"
    );
    sandbox.remove().await.unwrap();
    let refused = engine
        .create_sandbox(crate::common::BASE_IMAGE, &id, config(DataPath::Fifo))
        .await
        .err()
        .expect("fifo on a tcp engine is refused");
    let message = refused.to_string();
    assert!(message.contains("needs a local engine"), "{message}");
}
