//! Where a mined repository's tests run, and the per-base-commit derived images.
//!
//! An [`Environment`] is an existing image (its Python environment already fits the repository) or a [`Recipe`]
//! (base image + install commands) built once into `swe-env-mined/<slug>-env:<hash12>`. From that env image,
//! [`base_image`] makes one image per base commit, `swe-env-mined/<slug>:<base sha 12>`, whose /testbed is a fresh
//! repository holding ONLY the objects reachable from the base commit (a pack built on the host with git2's
//! `PackBuilder`, `git index-pack`ed in a container): the fix commit and everything after it are not in the image.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swe_env_grading::log_parsers::LogParser;
use swe_env_sandbox::{DockerEngine, DockerSandbox, SandboxConfig, SandboxError};
use tracing::{info, warn};

use crate::task::CONDA_ACTIVATE;

/// Test command when none is given (SWE-bench's pytest form).
pub const DEFAULT_TEST_CMD: &str = "pytest -rA -p no:cacheprovider";
/// Log parser when none is given.
pub const DEFAULT_LOG_PARSER: &str = "pytest";
/// The host CA bundle passed into recipe builds with network (PIP_CERT / SSL_CERT_FILE) when present.
pub const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Label on every image `mine` makes: `history`, `mutate`, or `env` (recipe env images).
pub const LABEL_MINED: &str = "swe-env.mined";
/// Label: the base commit (full sha) of a derived image.
pub const LABEL_BASE: &str = "swe-env.mined.base";
/// Label: the env image id a history image was derived from.
pub const LABEL_ENV: &str = "swe-env.mined.env";

const REPO_DIR: &str = "/testbed";
const PACK_PATH: &str = "/tmp/swe-env-mined.pack";
const CA_PATH: &str = "/tmp/swe-env-mined-ca.crt";

/// The environment mined rows run in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Environment {
    /// An existing image whose environment fits the repository (its /testbed is replaced per base commit).
    Image {
        /// Image reference.
        image: String,
        /// Activation line(s).
        activate: String,
        /// Test command (the test patch's files are appended).
        test_cmd: String,
        /// Log parser name.
        log_parser: String,
        /// Commands re-run in /testbed at each base commit (under the activation line) so build products and
        /// installed copies are the base's (CLI `--install`, default none).
        install: Vec<String>,
    },
    /// Built from a recipe.
    Recipe(Recipe),
}

impl Environment {
    /// Activation line(s) of the rows.
    pub fn activate(&self) -> &str {
        match self {
            Self::Image { activate, .. } => activate,
            Self::Recipe(recipe) => &recipe.activate,
        }
    }

    /// Test command of the rows.
    pub fn test_cmd(&self) -> &str {
        match self {
            Self::Image { test_cmd, .. } => test_cmd,
            Self::Recipe(recipe) => &recipe.test_cmd,
        }
    }

    /// Log parser of the rows.
    pub fn log_parser(&self) -> &str {
        match self {
            Self::Image { log_parser, .. } => log_parser,
            Self::Recipe(recipe) => &recipe.log_parser,
        }
    }

    /// Install commands, re-run at every base commit by [`base_image`].
    pub fn install(&self) -> &[String] {
        match self {
            Self::Image { install, .. } => install,
            Self::Recipe(recipe) => &recipe.install,
        }
    }

    /// Docker network of the install commands: the recipe's; `bridge` for an image with install commands.
    fn install_network(&self) -> &str {
        match self {
            Self::Image { install, .. } if install.is_empty() => "none",
            Self::Image { .. } => "bridge",
            Self::Recipe(recipe) => &recipe.network,
        }
    }
}

/// An environment recipe (YAML): a base image with git, install commands run in /testbed at the range's end
/// commit under the activation line, and the rows' test settings. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    /// Image to start from (must have git and bash).
    pub base_image: String,
    /// Shell commands run in order in /testbed (`bash -lc`), each after the activation line.
    pub install: Vec<String>,
    /// Activation line(s).
    pub activate: String,
    /// Test command.
    pub test_cmd: String,
    /// Log parser name.
    pub log_parser: String,
    /// Docker network of the install commands: `bridge` (default) or `none`.
    pub network: String,
}

impl Default for Recipe {
    fn default() -> Self {
        Self {
            base_image: String::new(),
            install: Vec::new(),
            activate: CONDA_ACTIVATE.to_owned(),
            test_cmd: DEFAULT_TEST_CMD.to_owned(),
            log_parser: DEFAULT_LOG_PARSER.to_owned(),
            network: "bridge".to_owned(),
        }
    }
}

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn load(path: &Path) -> Result<Self, EnvError> {
        let recipe: Recipe =
            swe_env_model::yaml::load_file(path, "environment recipe").map_err(|e| {
                EnvError::Recipe {
                    path: path.to_owned(),
                    detail: e.to_string(),
                }
            })?;
        recipe.check().map_err(|detail| EnvError::Recipe {
            path: path.to_owned(),
            detail,
        })?;
        Ok(recipe)
    }

    /// The recipe's own consistency (a message saying what to fix).
    pub fn check(&self) -> Result<(), String> {
        if self.base_image.trim().is_empty() {
            return Err("`base_image` is required (an image with git and bash)".to_owned());
        }
        if self.test_cmd.trim().is_empty() {
            return Err("`test_cmd` must not be empty".to_owned());
        }
        LogParser::parse_lenient(&self.log_parser).map_err(|e| format!("`log_parser`: {e}"))?;
        if !matches!(self.network.as_str(), "bridge" | "none") {
            return Err(format!(
                "`network` is {:?}; use `bridge` or `none`",
                self.network
            ));
        }
        Ok(())
    }
}

/// Building an environment or a derived image failed.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The recipe file is unreadable or wrong.
    #[error("environment recipe {}: {detail}", path.display())]
    Recipe {
        /// The file.
        path: PathBuf,
        /// What to fix.
        detail: String,
    },
    /// An image the environment needs is not present locally.
    #[error("image {image} is not present; build or pull it first (docker pull {image})")]
    ImageMissing {
        /// The image.
        image: String,
    },
    /// Reading the repository on the host failed.
    #[error("repository {path}: {detail}")]
    Git {
        /// The repository.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A step in the build container failed.
    #[error("{step} failed in the build container (exit {exit_code:?}): {output}")]
    Step {
        /// Which step.
        step: String,
        /// Its exit status.
        exit_code: Option<i64>,
        /// The end of its output.
        output: String,
    },
    /// Docker failed.
    #[error("docker: {0}")]
    Sandbox(#[from] SandboxError),
}

/// The image mined rows' derived images start from: the image itself, or the recipe's env image (built once:
/// base image container, repository at `to_commit` via the pack method, install commands, commit), reused when
/// present. `slug` names it ([`crate::mine::swerl::slug`]).
pub async fn env_image(
    engine: &DockerEngine,
    repo_path: &Path,
    to_commit: &str,
    environment: &Environment,
    slug: &str,
) -> Result<String, EnvError> {
    let recipe = match environment {
        Environment::Image { image, .. } => {
            if engine.image_info(image).await?.is_none() {
                return Err(EnvError::ImageMissing {
                    image: image.clone(),
                });
            }
            return Ok(image.clone());
        }
        Environment::Recipe(recipe) => recipe,
    };
    let to = resolve(repo_path, to_commit)?;
    let key = serde_json::to_string(recipe).unwrap_or_default() + &to;
    let reference = format!("swe-env-mined/{slug}-env:{}", hash12(key.as_bytes()));
    if engine.image_info(&reference).await?.is_some() {
        info!(image = %reference, "recipe env image present; reused");
        return Ok(reference);
    }
    if engine.image_info(&recipe.base_image).await?.is_none() {
        return Err(EnvError::ImageMissing {
            image: recipe.base_image.clone(),
        });
    }
    let pack = pack_reachable(repo_path, &to)?;
    let config = SandboxConfig {
        network_mode: recipe.network.clone(),
        workdir: "/".to_owned(),
        ..SandboxConfig::default()
    };
    let sandbox = engine
        .create_sandbox(&recipe.base_image, &format!("mine-env-{slug}"), config)
        .await?;
    let result = async {
        install_repo(&sandbox, &pack, &to, false).await?;
        run_install(&sandbox, &recipe.install, &recipe.activate, &recipe.network).await?;
        // The env image keeps no history (base images get their own repository); the CA bundle stays out of it.
        run_step(
            &sandbox,
            "removing the build repository's history",
            &["rm", "-rf", "/testbed/.git"],
            Duration::from_secs(300),
        )
        .await?;
        let labels = HashMap::from([
            (LABEL_MINED.to_owned(), "env".to_owned()),
            (LABEL_BASE.to_owned(), to.clone()),
        ]);
        sandbox.commit_image(&reference, labels).await?;
        Ok::<_, EnvError>(())
    }
    .await;
    remove(&sandbox).await;
    result?;
    info!(image = %reference, "recipe env image built");
    Ok(reference)
}

/// The derived image of `base_commit`: a container from `env_image` whose /testbed becomes a fresh repository
/// holding only the objects reachable from the base commit (branch `main` there, `git reset --hard`, `git clean
/// -fdqx`: ignored build products of the env image's commit go too, bytecode purged), then the environment's
/// install commands re-run at the base (so build output and installed copies are the base's, not a later
/// commit's), committed as `swe-env-mined/<slug>:<base sha 12>-<env8>` (env8: the env image id's first 8 hex
/// digits). An existing image of that name labelled with the same base and env image id is reused.
pub async fn base_image(
    engine: &DockerEngine,
    repo_path: &Path,
    base_commit: &str,
    env_image: &str,
    slug: &str,
    environment: &Environment,
) -> Result<String, EnvError> {
    base_image_made(engine, repo_path, base_commit, env_image, slug, environment)
        .await
        .map(|(image, _)| image)
}

/// The name [`base_image`] gives the image of `base` (full sha) derived from the env image with id `env_id`.
pub fn base_image_reference(slug: &str, base: &str, env_id: &str) -> String {
    let digest = env_id.strip_prefix("sha256:").unwrap_or(env_id);
    let env8: String = digest.chars().take(8).collect();
    format!(
        "swe-env-mined/{slug}:{}-{env8}",
        &base[..base.len().min(12)]
    )
}

/// [`base_image`], and whether this call made the image (false: an existing one was reused).
pub async fn base_image_made(
    engine: &DockerEngine,
    repo_path: &Path,
    base_commit: &str,
    env_image: &str,
    slug: &str,
    environment: &Environment,
) -> Result<(String, bool), EnvError> {
    let base = resolve(repo_path, base_commit)?;
    let env_id = engine
        .image_info(env_image)
        .await?
        .ok_or_else(|| EnvError::ImageMissing {
            image: env_image.to_owned(),
        })?
        .id;
    let reference = base_image_reference(slug, &base, &env_id);
    if let Some(existing) = engine.image_info(&reference).await? {
        if existing.labels.get(LABEL_ENV) == Some(&env_id)
            && existing.labels.get(LABEL_BASE) == Some(&base)
        {
            return Ok((reference, false));
        }
    }
    let pack = pack_reachable(repo_path, &base)?;
    let config = SandboxConfig {
        network_mode: environment.install_network().to_owned(),
        workdir: "/".to_owned(),
        ..SandboxConfig::default()
    };
    let sandbox = engine
        .create_sandbox(env_image, &format!("mine-base-{}", &base[..12]), config)
        .await?;
    let result = async {
        install_repo(&sandbox, &pack, &base, true).await?;
        if !environment.install().is_empty() {
            // Installed at the base: build output and installed copies are the base's.
            run_install(
                &sandbox,
                environment.install(),
                environment.activate(),
                environment.install_network(),
            )
            .await?;
            run_step(
                &sandbox,
                "purging bytecode after the install",
                &["bash", "-c", &format!("cd {REPO_DIR} && {PURGE_BYTECODE}")],
                Duration::from_secs(300),
            )
            .await?;
        }
        let labels = HashMap::from([
            (LABEL_MINED.to_owned(), "history".to_owned()),
            (LABEL_BASE.to_owned(), base.clone()),
            (LABEL_ENV.to_owned(), env_id.clone()),
        ]);
        sandbox.commit_image(&reference, labels).await?;
        Ok::<_, EnvError>(())
    }
    .await;
    remove(&sandbox).await;
    result?;
    info!(image = %reference, base = %base, "base image built");
    Ok((reference, true))
}

/// Runs `install` in order in /testbed (`bash -lc`, each after the activation line; with network, the host CA
/// bundle as PIP_CERT / SSL_CERT_FILE, removed afterwards).
async fn run_install(
    sandbox: &DockerSandbox,
    install: &[String],
    activate: &str,
    network: &str,
) -> Result<(), EnvError> {
    if install.is_empty() {
        return Ok(());
    }
    let ca = if network != "none" {
        std::fs::read(HOST_CA_BUNDLE).ok()
    } else {
        None
    };
    let exports = match &ca {
        Some(bytes) => {
            sandbox.write_bytes(CA_PATH, bytes).await?;
            format!("export PIP_CERT={CA_PATH} SSL_CERT_FILE={CA_PATH}\n")
        }
        None => String::new(),
    };
    for (i, command) in install.iter().enumerate() {
        let script = format!("{activate}\n{exports}cd {REPO_DIR} || exit 1\n{command}");
        run_step(
            sandbox,
            &format!("install command {} ({command})", i + 1),
            &["bash", "-lc", &script],
            Duration::from_secs(3600),
        )
        .await?;
    }
    if ca.is_some() {
        run_step(
            sandbox,
            "removing the CA bundle",
            &["rm", "-f", CA_PATH],
            Duration::from_secs(60),
        )
        .await?;
    }
    Ok(())
}

async fn remove(sandbox: &DockerSandbox) {
    if let Err(error) = sandbox.remove().await {
        warn!(container = sandbox.id(), %error, "removing a mine build container failed; `swe-env gc` will remove it");
    }
}

/// First 12 hex digits of SHA-256.
fn hash12(bytes: &[u8]) -> String {
    let mut hex = crate::trajectory::digest::sha256_hex(bytes);
    hex.truncate(12);
    hex
}

/// Full sha of `rev` in the repository at `repo_path`.
fn resolve(repo_path: &Path, rev: &str) -> Result<String, EnvError> {
    let git = |detail: String| EnvError::Git {
        path: repo_path.to_owned(),
        detail,
    };
    let repo = git2::Repository::open(repo_path).map_err(|e| git(e.to_string()))?;
    let commit = repo
        .revparse_single(rev)
        .and_then(|o| o.peel_to_commit())
        .map_err(|e| git(format!("{rev:?} is not a commit: {e}")))?;
    Ok(commit.id().to_string())
}

/// A pack of every object reachable from `commit` (its history, trees and blobs), and nothing else.
pub fn pack_reachable(repo_path: &Path, commit: &str) -> Result<Vec<u8>, EnvError> {
    let git = |e: git2::Error| EnvError::Git {
        path: repo_path.to_owned(),
        detail: format!("packing the objects reachable from {commit}: {e}"),
    };
    let repo = git2::Repository::open(repo_path).map_err(git)?;
    let oid = git2::Oid::from_str(commit).map_err(git)?;
    let mut walk = repo.revwalk().map_err(git)?;
    walk.push(oid).map_err(git)?;
    let mut builder = repo.packbuilder().map_err(git)?;
    builder.insert_walk(&mut walk).map_err(git)?;
    let mut buf = git2::Buf::new();
    builder.write_buf(&mut buf).map_err(git)?;
    Ok(buf.to_vec())
}

/// Removes compiled Python under the working directory: bytecode of another version of the code (the env image's
/// checkout, a later commit) would give the answer away to an agent that decompiles it. Python recompiles what it
/// needs.
pub const PURGE_BYTECODE: &str =
    "find . -name .git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} + \\\n  -o -name '*.py[co]' -type f -exec rm -f {} +\n";

/// Bytes per `write_bytes` of the pack (each write has its own time limit).
const PACK_CHUNK: usize = 16 << 20;

/// Replaces /testbed/.git with a fresh repository made of `pack` (branch `main` at `commit`) and checks it out.
/// The pack goes in as numbered chunks, concatenated into `git index-pack --stdin`.
async fn install_repo(
    sandbox: &DockerSandbox,
    pack: &[u8],
    commit: &str,
    clean_ignored: bool,
) -> Result<(), EnvError> {
    for (i, chunk) in pack.chunks(PACK_CHUNK).enumerate() {
        sandbox
            .write_bytes(&format!("{PACK_PATH}.{i:05}"), chunk)
            .await?;
    }
    let clean = if clean_ignored { "-fdqx" } else { "-fdq" };
    let script = format!(
        "set -e\nmkdir -p {REPO_DIR}\ncd {REPO_DIR}\nrm -rf .git\ngit init -q\n\
cat {PACK_PATH}.* | git index-pack --stdin >/dev/null\nrm -f {PACK_PATH}.*\n\
git update-ref refs/heads/main {commit}\ngit symbolic-ref HEAD refs/heads/main\n\
git reset -q --hard main\ngit clean {clean}\n{PURGE_BYTECODE}"
    );
    run_step(
        sandbox,
        "installing the repository at the commit",
        &["bash", "-c", &script],
        Duration::from_secs(900),
    )
    .await
}

async fn run_step(
    sandbox: &DockerSandbox,
    step: &str,
    argv: &[&str],
    timeout: Duration,
) -> Result<(), EnvError> {
    let out = sandbox.exec(argv, None, timeout).await?;
    if out.exit_code == Some(0) {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Err(EnvError::Step {
        step: step.to_owned(),
        exit_code: out.exit_code,
        output: crate::mine::tail(&output, 2000),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_yaml_defaults_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recipe.yaml");
        std::fs::write(
            &path,
            "base_image: swe-env/base:bookworm\ninstall:\n  - pip install -e .\nactivate: source /opt/venv/bin/activate\n",
        )
        .unwrap();
        let recipe = Recipe::load(&path).unwrap();
        assert_eq!(recipe.install, vec!["pip install -e ."]);
        assert_eq!(recipe.test_cmd, DEFAULT_TEST_CMD);
        assert_eq!(recipe.log_parser, "pytest");
        assert_eq!(recipe.network, "bridge");

        std::fs::write(&path, "base_image: x\ninstal: []\n").unwrap();
        let error = Recipe::load(&path).unwrap_err().to_string();
        assert!(error.contains("instal"), "{error}");

        std::fs::write(&path, "install: []\n").unwrap();
        let error = Recipe::load(&path).unwrap_err().to_string();
        assert!(error.contains("base_image"), "{error}");

        std::fs::write(&path, "base_image: x\nnetwork: host\n").unwrap();
        assert!(Recipe::load(&path).is_err());
        std::fs::write(&path, "base_image: x\nlog_parser: nope\n").unwrap();
        assert!(Recipe::load(&path).is_err());
    }

    #[test]
    fn hash12_is_hex() {
        let h = hash12(b"abc");
        assert_eq!(h, "ba7816bf8f01");
    }

    /// Docker: a recipe builds its env image once (repository at `to`, install commands run under the activation
    /// line in /testbed), reuses it, and base images derive from it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recipe_env_image_is_built_once_and_derived_from() {
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        let mut fx = crate::mine::test_repo::TestRepo::new();
        let commits: Vec<String> = ["one\n", "two\n"]
            .iter()
            .map(|text| fx.commit_head(&[("file.txt", text)], text).to_string())
            .collect();
        let dir = fx.path().to_owned();
        let slug = format!("unit-env{:08x}", rand::random::<u32>());
        let recipe = Recipe {
            base_image: "swe-env/fixture-retrykit:latest".into(),
            install: vec!["echo \"$VIRTUAL_ENV $(cat file.txt)\" > /opt/installed".into()],
            activate: "source /opt/venv/bin/activate".into(),
            network: "none".into(),
            ..Recipe::default()
        };
        let environment = Environment::Recipe(recipe);
        let built = env_image(&engine, dir.as_path(), "HEAD", &environment, &slug).await;
        let mut made = Vec::new();
        let checks = async {
            let built = built.unwrap();
            made.push(built.clone());
            assert!(
                built.starts_with(&format!("swe-env-mined/{slug}-env:")),
                "{built}"
            );
            let id = engine.image_info(&built).await.unwrap().unwrap().id;
            let again = env_image(&engine, dir.as_path(), &commits[1], &environment, &slug)
                .await
                .unwrap();
            assert_eq!(again, built);
            assert_eq!(engine.image_info(&again).await.unwrap().unwrap().id, id);
            let base = base_image(
                &engine,
                dir.as_path(),
                &commits[0],
                &built,
                &slug,
                &environment,
            )
            .await
            .unwrap();
            made.push(base.clone());
            let sandbox = engine
                .create_sandbox(
                    &base,
                    "mine-unit-env",
                    SandboxConfig {
                        network_mode: "none".into(),
                        ..SandboxConfig::default()
                    },
                )
                .await
                .unwrap();
            let out = sandbox
                .exec(
                    &["bash", "-c", "cat /opt/installed; cd /testbed && cat file.txt && git rev-parse HEAD && git cat-file -e HEAD~0 && git rev-list --all | wc -l"],
                    None,
                    Duration::from_secs(60),
                )
                .await;
            sandbox.remove().await.unwrap();
            let out = String::from_utf8(out.unwrap().stdout).unwrap();
            // The install commands re-ran at the base commit (D1).
            assert_eq!(out, format!("/opt/venv one\none\n{}\n1\n", commits[0]));
        };
        let result =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
        for image in &made {
            std::process::Command::new("docker")
                .args(["rmi", "-f", image])
                .output()
                .unwrap();
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// D5: the base images of one base commit made from two different env images have different names (the
    /// first is not repointed by the second).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn base_images_of_two_env_images_do_not_clash() {
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        let mut fx = crate::mine::test_repo::TestRepo::new();
        let base = fx.commit_head(&[("file.txt", "one\n")], "one").to_string();
        let dir = fx.path().to_owned();
        let slug = format!("unit-clash{:08x}", rand::random::<u32>());
        let environment = |image: &str| Environment::Image {
            image: image.into(),
            activate: String::new(),
            test_cmd: DEFAULT_TEST_CMD.into(),
            log_parser: DEFAULT_LOG_PARSER.into(),
            install: Vec::new(),
        };
        let mut made = Vec::new();
        let checks = async {
            let mut ids = Vec::new();
            for env in [
                "swe-env/fixture-retrykit:latest",
                "swe-env/fixture-slugkit:latest",
            ] {
                let image =
                    base_image(&engine, dir.as_path(), &base, env, &slug, &environment(env))
                        .await
                        .unwrap();
                made.push(image.clone());
                ids.push(engine.image_info(env).await.unwrap().unwrap().id);
            }
            assert_ne!(made[0], made[1]);
            for (image, env_id) in made.iter().zip(&ids) {
                let info = engine.image_info(image).await.unwrap().unwrap();
                assert_eq!(info.labels.get(LABEL_ENV), Some(env_id), "{image}");
                assert_eq!(*image, base_image_reference(&slug, &base, env_id));
                assert!(
                    image.starts_with(&format!("swe-env-mined/{slug}:{}-", &base[..12])),
                    "{image}"
                );
            }
        };
        let result =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
        for image in &made {
            std::process::Command::new("docker")
                .args(["rmi", "-f", image])
                .output()
                .unwrap();
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
