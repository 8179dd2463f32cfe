//! Where the Docker engine is: `DOCKER_HOST`, `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` read as the Docker CLI
//! reads them. A set `DOCKER_HOST` is never replaced by the local socket: what cannot be honoured is refused.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use bollard::Docker;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::SandboxError;

/// The engine's socket when `DOCKER_HOST` is unset or empty.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// Port of `tcp://HOST` without TLS, as the Docker CLI.
const DEFAULT_TCP_PORT: u16 = 2375;
/// Port of `tcp://HOST` with TLS, as the Docker CLI.
const DEFAULT_TLS_PORT: u16 = 2376;

/// One Docker engine address with its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineEndpoint {
    /// A local unix socket.
    Unix {
        /// Absolute socket path.
        path: PathBuf,
    },
    /// Plain HTTP over TCP (`DOCKER_TLS_VERIFY` unset).
    Tcp {
        /// `HOST:PORT`.
        authority: String,
    },
    /// HTTPS over TCP: the server is verified with `ca.pem` (and the system roots, like the Docker CLI), the client
    /// authenticates with `cert.pem` + `key.pem`.
    Tls {
        /// `HOST:PORT`.
        authority: String,
        /// Directory holding `ca.pem`, `cert.pem` and `key.pem`.
        cert_dir: PathBuf,
    },
}

impl fmt::Display for EngineEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix { path } => write!(f, "unix://{}", path.display()),
            Self::Tcp { authority } => write!(f, "tcp://{authority}"),
            Self::Tls {
                authority,
                cert_dir,
            } => write!(
                f,
                "tcp://{authority} (TLS, certificates in {})",
                cert_dir.display()
            ),
        }
    }
}

impl EngineEndpoint {
    /// The endpoint the process environment names.
    pub fn from_env() -> Result<Self, SandboxError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The endpoint named by the variables `lookup` returns (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_TLS`,
    /// `DOCKER_CERT_PATH`, `DOCKER_CONFIG`, `HOME`); an empty variable counts as unset, as for the Docker CLI.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, SandboxError> {
        let var = |name: &'static str| -> Result<Option<String>, SandboxError> {
            match lookup(name) {
                None => Ok(None),
                Some(value) if value.is_empty() => Ok(None),
                Some(value) => value.into_string().map(Some).map_err(|value| {
                    config_error(
                        name,
                        &value.to_string_lossy(),
                        "the value is not valid UTF-8".into(),
                    )
                }),
            }
        };
        let Some(host) = var("DOCKER_HOST")? else {
            return Ok(Self::Unix {
                path: DEFAULT_SOCKET.into(),
            });
        };
        let host = host.trim();
        let Some((scheme, rest)) = host.split_once("://") else {
            return Err(config_error(
                "DOCKER_HOST",
                host,
                "it has no scheme (did you mean tcp://…?)".into(),
            ));
        };
        match scheme {
            "unix" => {
                if rest.is_empty() || !rest.starts_with('/') {
                    return Err(config_error(
                        "DOCKER_HOST",
                        host,
                        "a unix:// address needs an absolute socket path (unix:///var/run/docker.sock)".into(),
                    ));
                }
                Ok(Self::Unix { path: rest.into() })
            }
            "tcp" => {
                let tls_verify = var("DOCKER_TLS_VERIFY")?.is_some();
                if !tls_verify && var("DOCKER_TLS")?.is_some() {
                    return Err(config_error(
                        "DOCKER_TLS",
                        "set",
                        "TLS without verifying the engine's certificate is not supported: set DOCKER_TLS_VERIFY=1 \
                         (and DOCKER_CERT_PATH), or unset DOCKER_TLS for plain tcp://"
                            .into(),
                    ));
                }
                let default_port = if tls_verify {
                    DEFAULT_TLS_PORT
                } else {
                    DEFAULT_TCP_PORT
                };
                let authority = tcp_authority(host, rest, default_port)?;
                if !tls_verify {
                    return Ok(Self::Tcp { authority });
                }
                let cert_dir = match (var("DOCKER_CERT_PATH")?, var("DOCKER_CONFIG")?, var("HOME")?) {
                    (Some(dir), _, _) | (None, Some(dir), _) => PathBuf::from(dir),
                    (None, None, Some(home)) => Path::new(&home).join(".docker"),
                    (None, None, None) => {
                        return Err(config_error(
                            "DOCKER_CERT_PATH",
                            "",
                            "DOCKER_TLS_VERIFY is set but neither DOCKER_CERT_PATH nor HOME is: set DOCKER_CERT_PATH \
                             to the directory holding ca.pem, cert.pem and key.pem"
                                .into(),
                        ))
                    }
                };
                Ok(Self::Tls {
                    authority,
                    cert_dir,
                })
            }
            "ssh" => Err(config_error(
                "DOCKER_HOST",
                host,
                "ssh:// is not supported; forward the remote socket instead (ssh -NL /tmp/docker.sock:/var/run/\
                 docker.sock USER@HOST) and set DOCKER_HOST=unix:///tmp/docker.sock"
                    .into(),
            )),
            "npipe" => Err(config_error(
                "DOCKER_HOST",
                host,
                "npipe:// (Windows named pipes) is not supported on this platform".into(),
            )),
            other => Err(config_error(
                "DOCKER_HOST",
                host,
                format!("the scheme {other}:// is not supported"),
            )),
        }
    }

    /// Checks the TLS material before any connection: `bollard` would otherwise read the client key at handshake
    /// time and, on failure, silently send no certificate (the engine then answers a bare "bad certificate").
    pub fn check_tls_material(&self) -> Result<(), SandboxError> {
        let Self::Tls { cert_dir, .. } = self else {
            return Ok(());
        };
        let ca = cert_dir.join("ca.pem");
        let cert = cert_dir.join("cert.pem");
        let key = cert_dir.join("key.pem");
        for path in [&ca, &cert] {
            let bytes = read_material(path)?;
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_error(path, format!("not a PEM certificate file ({e})")))?;
            if certs.is_empty() {
                return Err(tls_error(path, "holds no PEM certificate".into()));
            }
        }
        let bytes = read_material(&key)?;
        let parsed = PrivateKeyDer::from_pem_slice(&bytes)
            .map_err(|e| tls_error(&key, format!("not a PEM private key ({e})")))?;
        rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(parsed)
            .map_err(|e| tls_error(&key, format!("unusable private key ({e})")))?;
        Ok(())
    }

    /// A client for this endpoint (no request made yet). Checks the TLS material first.
    pub(crate) fn client(&self) -> Result<Docker, SandboxError> {
        /// bollard's per-request timeout until the caller's `with_timeout`.
        const INITIAL_TIMEOUT_SECS: u64 = 120;
        let version = bollard::API_DEFAULT_VERSION;
        match self {
            Self::Unix { path } => Docker::connect_with_unix(
                &format!("unix://{}", path.display()),
                INITIAL_TIMEOUT_SECS,
                version,
            )
            .map_err(|e| SandboxError::docker("connect", e)),
            Self::Tcp { authority } => Docker::connect_with_http(
                &format!("tcp://{authority}"),
                INITIAL_TIMEOUT_SECS,
                version,
            )
            .map_err(|e| SandboxError::docker("connect", e)),
            Self::Tls {
                authority,
                cert_dir,
            } => {
                self.check_tls_material()?;
                // rustls needs a process-wide provider (only ring is built); an earlier install is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Docker::connect_with_ssl(
                    &format!("tcp://{authority}"),
                    &cert_dir.join("key.pem"),
                    &cert_dir.join("cert.pem"),
                    &cert_dir.join("ca.pem"),
                    INITIAL_TIMEOUT_SECS,
                    version,
                )
                .map_err(|e| SandboxError::EngineTls {
                    path: cert_dir.clone(),
                    detail: e.to_string(),
                })
            }
        }
    }
}

/// `HOST:PORT` of a `tcp://` address (`rest` is what follows the scheme), the default port added when missing.
fn tcp_authority(host: &str, rest: &str, default_port: u16) -> Result<String, SandboxError> {
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err(config_error(
            "DOCKER_HOST",
            host,
            "a path after HOST:PORT is not supported".into(),
        ));
    }
    let bad = |why: &str| {
        config_error(
            "DOCKER_HOST",
            host,
            format!("tcp:// needs HOST[:PORT] ({why})"),
        )
    };
    if authority.is_empty() {
        return Err(bad("the host is empty"));
    }
    if authority.contains(['@', '?', '#']) || authority.chars().any(char::is_whitespace) {
        return Err(bad("user names, queries and spaces are not allowed"));
    }
    // `[v6]` or `[v6]:port`; otherwise `host` or `host:port`.
    let (name, port) = if let Some(inner) = authority.strip_prefix('[') {
        match inner.split_once(']') {
            Some((v6, "")) => (v6, None),
            Some((v6, tail)) => match tail.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return Err(bad("junk after the IPv6 address")),
            },
            None => return Err(bad("unclosed [")),
        }
    } else {
        match authority.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (authority, None),
        }
    };
    if name.is_empty() {
        return Err(bad("the host is empty"));
    }
    let port = match port {
        None => default_port,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => {
                return Err(bad(&format!(
                    "the port {port:?} is not a number from 1 to 65535"
                )))
            }
        },
    };
    Ok(if authority.starts_with('[') {
        format!("[{name}]:{port}")
    } else {
        format!("{name}:{port}")
    })
}

fn read_material(path: &Path) -> Result<Vec<u8>, SandboxError> {
    std::fs::read(path).map_err(|e| tls_error(path, format!("cannot read it ({e})")))
}

fn tls_error(path: &Path, detail: String) -> SandboxError {
    SandboxError::EngineTls {
        path: path.to_path_buf(),
        detail,
    }
}

fn config_error(variable: &'static str, value: &str, reason: String) -> SandboxError {
    SandboxError::EngineConfig {
        variable,
        value: value.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<EngineEndpoint, SandboxError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EngineEndpoint::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn unset_or_empty_docker_host_is_the_default_socket() {
        let default = EngineEndpoint::Unix {
            path: DEFAULT_SOCKET.into(),
        };
        assert_eq!(parse(&[]).unwrap(), default);
        assert_eq!(parse(&[("DOCKER_HOST", "")]).unwrap(), default);
        // TLS variables do not apply to unix sockets, as for the Docker CLI.
        assert_eq!(parse(&[("DOCKER_TLS_VERIFY", "1")]).unwrap(), default);
    }

    #[test]
    fn unix_and_tcp_addresses_are_read_like_the_docker_cli() {
        assert_eq!(
            parse(&[("DOCKER_HOST", "unix:///run/user/1000/docker.sock")]).unwrap(),
            EngineEndpoint::Unix {
                path: "/run/user/1000/docker.sock".into()
            }
        );
        let tcp = |authority: &str| EngineEndpoint::Tcp {
            authority: authority.into(),
        };
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://10.0.0.5:2375")]).unwrap(),
            tcp("10.0.0.5:2375")
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://engine")]).unwrap(),
            tcp("engine:2375")
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", " tcp://engine:1234/ ")]).unwrap(),
            tcp("engine:1234")
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://[::1]")]).unwrap(),
            tcp("[::1]:2375")
        );
        assert_eq!(
            parse(&[("DOCKER_HOST", "tcp://[::1]:99")]).unwrap(),
            tcp("[::1]:99")
        );
        assert_eq!(
            parse(&[
                ("DOCKER_HOST", "tcp://engine"),
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", "/certs")
            ])
            .unwrap(),
            EngineEndpoint::Tls {
                authority: "engine:2376".into(),
                cert_dir: "/certs".into()
            }
        );
        assert_eq!(
            parse(&[
                ("DOCKER_HOST", "tcp://engine:3000"),
                ("DOCKER_TLS_VERIFY", "1"),
                ("HOME", "/home/me")
            ])
            .unwrap(),
            EngineEndpoint::Tls {
                authority: "engine:3000".into(),
                cert_dir: "/home/me/.docker".into()
            }
        );
    }

    #[test]
    fn unsupported_addresses_are_refused_naming_the_variable_and_the_supported_forms() {
        for (value, hint) in [
            ("ssh://me@engine", "ssh -NL"),
            (
                "npipe:////./pipe/docker_engine",
                "not supported on this platform",
            ),
            ("http://engine:2375", "http:// is not supported"),
            ("engine:2375", "no scheme"),
            ("garbage", "no scheme"),
            ("unix://relative.sock", "absolute"),
            ("tcp://", "host is empty"),
            ("tcp://:2375", "host is empty"),
            ("tcp://engine:port", "not a number"),
            ("tcp://engine:0", "not a number"),
            ("tcp://engine:2375/v1", "path"),
            ("tcp://me@engine", "user names"),
        ] {
            let error = parse(&[("DOCKER_HOST", value)]).unwrap_err();
            assert!(
                matches!(error, SandboxError::EngineConfig { .. }),
                "{value}: {error:?}"
            );
            let message = error.to_string();
            assert!(message.contains("DOCKER_HOST"), "{message}");
            assert!(message.contains(value.trim()), "{message}");
            assert!(message.contains(hint), "{value}: {message}");
            assert!(message.contains("unix:///path/to/docker.sock"), "{message}");
        }
        let error = parse(&[("DOCKER_HOST", "tcp://engine"), ("DOCKER_TLS", "1")]).unwrap_err();
        assert!(error.to_string().contains("DOCKER_TLS_VERIFY=1"), "{error}");
    }

    #[test]
    fn missing_or_broken_tls_material_is_named_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let endpoint = EngineEndpoint::Tls {
            authority: "127.0.0.1:1".into(),
            cert_dir: dir.path().into(),
        };
        let message = endpoint.check_tls_material().unwrap_err().to_string();
        assert!(
            message.contains("ca.pem") && message.contains("cannot read"),
            "{message}"
        );
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let message = endpoint.check_tls_material().unwrap_err().to_string();
        assert!(
            message.contains("ca.pem") && message.contains("no PEM certificate"),
            "{message}"
        );
        assert!(message.contains("DOCKER_CERT_PATH"), "{message}");
        let message = endpoint.client().err().unwrap().to_string();
        assert!(message.contains("ca.pem"), "{message}");
    }
}
