//! Remote engines (issue 11): `DOCKER_HOST` / `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH` are honoured as the Docker
//! CLI honours them, and never replaced by the local socket. A SECOND dockerd (its own data root, exec root,
//! containerd, pidfile, unix socket, and a TLS listener on 127.0.0.1 with certificates made here by the openssl
//! CLI; no bridge, no iptables) stands for the remote engine; the host engine must stay untouched.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use swe_env_sandbox::{DockerEngine, EngineEndpoint, SandboxError};

use crate::common::{
    assert_success, base_config, base_sandbox, free_port, gc_report, removed_ids, run_ok,
    spawn_shell, unique_id, BASE_IMAGE,
};

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");

/// A second dockerd, stopped and its directories removed on drop (also when the test fails).
struct SecondEngine {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    /// The engine's own bridge interface, created by the test and deleted on drop.
    bridge: String,
}

impl SecondEngine {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn exec_root(&self) -> PathBuf {
        self.dir.path().join("exec")
    }

    /// Client certificates (ca.pem, cert.pem, key.pem), as DOCKER_CERT_PATH wants them.
    fn client_certs(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The environment a Docker CLI user would set for this engine.
    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            (
                "DOCKER_HOST",
                format!("tcp://127.0.0.1:{}", self.port).into(),
            ),
            ("DOCKER_TLS_VERIFY", "1".into()),
            ("DOCKER_CERT_PATH", self.client_certs().into()),
        ]
    }

    fn endpoint(&self) -> EngineEndpoint {
        let env = self.env();
        EngineEndpoint::from_lookup(|name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        })
        .unwrap()
    }

    /// The plain `docker` CLI on this engine's own unix socket.
    fn docker(&self) -> Command {
        let mut command = Command::new("docker");
        command
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()));
        command
    }

    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("swe-env-dockerd-")
            .tempdir()
            .unwrap();
        make_certificates(dir.path());
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let namespace = format!("swe-env-it-{}", std::process::id());
        let bridge = format!("swe-it-{}", std::process::id() % 10_000_000);
        let subnet = format!("10.254.{}.1/24", std::process::id() % 250);
        for args in [
            vec!["link", "add", "name", &bridge, "type", "bridge"],
            vec!["addr", "add", &subnet, "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            let status = Command::new("ip").args(&args).status().expect("run ip");
            assert!(status.success(), "ip {args:?}");
        }
        let path = |name: &str| dir.path().join(name);
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(path("daemon.json"))
            .arg("--data-root")
            .arg(path("data"))
            .arg("--exec-root")
            .arg(path("exec"))
            .arg("--pidfile")
            .arg(path("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", path("docker.sock").display()))
            .arg("-H")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(path("server/ca.pem"))
            .arg("--tlscert")
            .arg(path("server/cert.pem"))
            .arg("--tlskey")
            .arg(path("server/key.pem"))
            // Its own bridge: `--bridge none` makes dockerd DELETE the host engine's docker0 (both run in the host's
            // network namespace), which breaks every bridge-networked container of the host engine.
            .args(["--bridge", &bridge, "--iptables=false", "--ip-masq=false"])
            .args(["--ip6tables=false", "--userland-proxy=false"])
            .args(["--containerd-namespace", &namespace])
            .args([
                "--containerd-plugins-namespace",
                &format!("{namespace}-plugins"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start a second dockerd");
        let engine = Self {
            child: Some(child),
            dir,
            port,
            bridge,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = engine
                .docker()
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the second dockerd did not answer in 60 s; its log:\n{}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        engine
    }

    /// `docker save` of the base image from the host engine, `docker load` into this one.
    fn load_base_image(&self) {
        let mut save = Command::new("docker")
            .args(["save", BASE_IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let load = self
            .docker()
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            save.wait().unwrap().success(),
            "docker save {BASE_IMAGE} failed"
        );
        assert_success(&load, "docker load into the second engine");
    }
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .status();
        // A dockerd that had to be killed leaves its containerd and mounts behind.
        let containerd_pid = self.exec_root().join("containerd/containerd.pid");
        if let Ok(pid) = std::fs::read_to_string(containerd_pid) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
        let root = self.dir.path().to_string_lossy().into_owned();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut under: Vec<&str> = mounts
                .lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .filter(|target| target.starts_with(&root))
                .collect();
            under.sort_by_key(|target| std::cmp::Reverse(target.len()));
            for target in under {
                let _ = Command::new("umount").args(["-l", target]).status();
            }
        }
        for dir in [self.data_root(), self.exec_root()] {
            let _ = std::fs::remove_dir_all(dir);
        }
        // The TempDir removes the rest.
    }
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = swe-env test
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[client_ext]
basicConstraints = CA:FALSE
extendedKeyUsage = clientAuth
";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI (scripts/setup.sh installs it)");
    assert_success(&out, &format!("openssl {args:?}"));
}

/// A CA and, signed by it, `dir/server/{ca,cert,key}.pem` (IP SAN 127.0.0.1) and `dir/client/{ca,cert,key}.pem`.
/// `dir/stranger/` holds a client pair signed by another CA.
fn make_certificates(dir: &Path) {
    let pki = dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::write(pki.join("openssl.cnf"), OPENSSL_CONFIG).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let mut args = vec![
            "req",
            "-x509",
            "-config",
            "openssl.cnf",
            "-extensions",
            "ca_ext",
        ];
        args.extend(ec);
        let (key, cert) = (format!("{ca}-key.pem"), format!("{ca}.pem"));
        args.extend(["-keyout", &key, "-out", &cert, "-days", "2"]);
        openssl(&pki, &args);
    }
    for (name, ca, ext, serial) in [
        ("server", "ca", "server_ext", "2"),
        ("client", "ca", "client_ext", "3"),
        ("stranger", "other-ca", "client_ext", "4"),
    ] {
        let (key, csr, cert) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}-cert.pem"),
        );
        let subject = format!("/CN={name}");
        let mut args = vec!["req", "-new", "-config", "openssl.cnf", "-subj", &subject];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr]);
        openssl(&pki, &args);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}-key.pem"));
        openssl(
            &pki,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-set_serial",
                serial,
                "-days",
                "2",
                "-extfile",
                "openssl.cnf",
                "-extensions",
                ext,
                "-out",
                &cert,
            ],
        );
        let out = dir.join(name);
        std::fs::create_dir_all(&out).unwrap();
        // Every party trusts the real CA: the stranger's certificate is what the engine must refuse.
        std::fs::copy(pki.join("ca.pem"), out.join("ca.pem")).unwrap();
        std::fs::copy(pki.join(&cert), out.join("cert.pem")).unwrap();
        std::fs::copy(pki.join(&key), out.join("key.pem")).unwrap();
    }
}

/// A plain TCP listener on 127.0.0.1 forwarding every connection to `socket`: a `tcp://` engine without TLS.
async fn plain_tcp_proxy(socket: PathBuf) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut unix) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                }
            });
        }
    });
    port
}

fn labelled_ids(engine_docker: &mut Command) -> Vec<String> {
    let out =
        run_ok(engine_docker.args(["ps", "-aq", "--no-trunc", "--filter", "label=swe-env.owner"]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_host_with_tls_reaches_the_second_engine_and_never_the_local_one() {
    let second = SecondEngine::start();
    second.load_base_image();
    // A container of this (live) process on the host engine: it must be neither seen nor touched.
    let host_sandbox = base_sandbox("remote-host", base_config()).await;

    // Library level: the endpoint the environment names → connect → sandbox → command.
    let endpoint = second.endpoint();
    assert!(
        matches!(endpoint, EngineEndpoint::Tls { .. }),
        "{endpoint:?}"
    );
    let engine = DockerEngine::connect_to(&endpoint, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("connect over TLS: {e}\ndockerd log:\n{}", second.log()));
    assert!(engine.image_info(BASE_IMAGE).await.unwrap().is_some());
    let sandbox = engine
        .create_sandbox(BASE_IMAGE, &unique_id("remote"), base_config())
        .await
        .unwrap();
    let out = sandbox
        .run_command(
            "echo remote-$((6*7)); cat /etc/hostname",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.output);
    assert_eq!(out.exit_code, Some(0), "{text}");
    assert!(text.contains("remote-42"), "{text}");
    let on_second = labelled_ids(&mut second.docker());
    assert!(
        on_second.contains(&sandbox.id().to_string()),
        "{on_second:?}"
    );
    let on_host = labelled_ids(&mut Command::new("docker"));
    assert!(!on_host.contains(&sandbox.id().to_string()));
    assert!(on_host.contains(&host_sandbox.id().to_string()));

    // The same engine over plain tcp:// (DOCKER_TLS_VERIFY unset), through a forwarder to its socket.
    let plain_port = plain_tcp_proxy(second.socket()).await;
    let plain = EngineEndpoint::from_lookup(|name| {
        (name == "DOCKER_HOST").then(|| format!("tcp://127.0.0.1:{plain_port}").into())
    })
    .unwrap();
    assert!(matches!(plain, EngineEndpoint::Tcp { .. }), "{plain:?}");
    let plain_engine = DockerEngine::connect_to(&plain, Duration::from_secs(30))
        .await
        .unwrap();
    let seen: Vec<String> = plain_engine
        .labelled_containers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(seen, vec![sandbox.id().to_string()]);

    // The TLS port refuses plain HTTP and a client certificate of another CA: errors, never another engine.
    let wrong = EngineEndpoint::from_lookup(|name| {
        (name == "DOCKER_HOST").then(|| format!("tcp://127.0.0.1:{}", second.port).into())
    })
    .unwrap();
    assert!(DockerEngine::connect_to(&wrong, Duration::from_secs(10))
        .await
        .is_err());
    let stranger = EngineEndpoint::from_lookup(|name| match name {
        "DOCKER_HOST" => Some(format!("tcp://127.0.0.1:{}", second.port).into()),
        "DOCKER_TLS_VERIFY" => Some("1".into()),
        "DOCKER_CERT_PATH" => Some(second.dir.path().join("stranger").into()),
        _ => None,
    })
    .unwrap();
    match DockerEngine::connect_to(&stranger, Duration::from_secs(10)).await {
        Err(SandboxError::EngineUnavailable { detail }) => {
            assert!(detail.contains(&second.port.to_string()), "{detail}")
        }
        Err(other) => panic!("expected an unreachable engine, got {other}"),
        Ok(_) => panic!("a client certificate of another CA was accepted"),
    }

    // Through the real binary: an orphan on the second engine (SIGKILLed `swe-env shell`), then `gc --json`.
    let (mut shell, orphan) = spawn_shell(second.env());
    shell.kill().unwrap();
    shell.wait().unwrap();
    let on_second = labelled_ids(&mut second.docker());
    assert!(
        on_second.iter().any(|id| id.starts_with(&orphan)),
        "{orphan} not on the second engine: {on_second:?}"
    );
    assert!(!labelled_ids(&mut Command::new("docker"))
        .iter()
        .any(|id| id.starts_with(&orphan)));

    let host_before = labelled_ids(&mut Command::new("docker"));
    let report = gc_report(&[], second.env());
    // Only the second engine's two containers are seen (the host has at least `host_sandbox`).
    assert_eq!(report["seen"], 2, "{report}");
    let removed = removed_ids(&report);
    assert_eq!(removed.len(), 1, "{report}");
    assert!(
        removed[0].starts_with(&orphan) || orphan.starts_with(removed[0]),
        "{report}"
    );
    assert_eq!(
        labelled_ids(&mut second.docker()),
        vec![sandbox.id().to_string()]
    );
    let host_after = labelled_ids(&mut Command::new("docker"));
    assert!(host_after.contains(&host_sandbox.id().to_string()));
    assert!(
        !host_before.iter().any(|id| id.starts_with(removed[0])),
        "gc removed a host container: {report}"
    );

    sandbox.remove().await.unwrap();
    host_sandbox.remove().await.unwrap();
    drop(second);
}

fn swe_env_gc(env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(EXE)
        .args(["gc", "--json"])
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .env_remove("DOCKER_TLS")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_cert_path_is_an_infrastructure_error_naming_the_file() {
    let (code, stderr) = swe_env_gc(&[
        ("DOCKER_HOST", "tcp://127.0.0.1:1"),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", "/nonexistent/swe-env-certs"),
    ]);
    assert_eq!(code, 3, "{stderr}");
    assert!(
        stderr.contains("/nonexistent/swe-env-certs/ca.pem") && stderr.contains("DOCKER_CERT_PATH"),
        "{stderr}"
    );
}

#[test]
fn unsupported_docker_hosts_are_refused_not_replaced_by_the_local_socket() {
    for (host, hint) in [
        ("ssh://me@build-box", "ssh:// is not supported"),
        ("npipe:////./pipe/docker_engine", "npipe://"),
        ("nonsense", "no scheme"),
        // A socket that is not there is not the default socket either.
        (
            "unix:///nonexistent/docker.sock",
            "/nonexistent/docker.sock",
        ),
    ] {
        let (code, stderr) = swe_env_gc(&[("DOCKER_HOST", host)]);
        assert_eq!(code, 3, "{host}: {stderr}");
        assert!(stderr.contains(hint), "{host}: {stderr}");
        if !host.starts_with("unix") {
            assert!(stderr.contains("DOCKER_HOST"), "{stderr}");
            assert!(stderr.contains("tcp://HOST[:PORT]"), "{stderr}");
        }
    }
}
