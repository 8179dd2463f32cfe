//! Anti-leak set-up at episode start (as CWM's environment does): the future fix must not be readable from git.
//! Remotes are removed, every ref except the checked-out branch is deleted, reflogs are expired; `Full` also
//! drops unreachable objects from packs, so not even `git fsck --lost-found` can find future commits.

/// How thoroughly git history is cleaned at episode start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AntiLeak {
    /// Leave the repository alone.
    Off,
    /// Remotes, refs other than HEAD's branch, tags, stash and reflogs go (fast; the default).
    #[default]
    Refs,
    /// `Refs` plus pruning unreachable objects (`git gc --prune=now`; seconds on large repos).
    Full,
}

impl AntiLeak {
    /// `off`, `refs` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Refs => "refs",
            Self::Full => "full",
        }
    }
}

/// The shell script run in the repository directory at episode start.
pub fn anti_leak_script(level: AntiLeak) -> String {
    let mut script = format!(
        r#"( set -e
cd {repo} 2>/dev/null || exit 0
git rev-parse --git-dir >/dev/null 2>&1 || exit 0
for r in $(git remote); do git remote remove "$r"; done
head_ref=$(git symbolic-ref -q HEAD || true)
git for-each-ref --format='%(refname)' | while read -r ref; do
  [ "$ref" = "$head_ref" ] || git update-ref -d "$ref"
done
git reflog expire --expire=now --all
"#,
        repo = swe_env_tools::shell_quote(swe_env_grading::specs::SWE_BENCH_REPO_DIR),
    );
    if level == AntiLeak::Full {
        script.push_str("git gc --prune=now --quiet\n");
    }
    script.push_str(") >/dev/null 2>&1");
    script
}
