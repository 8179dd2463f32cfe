//! The patch apply chain: `git apply --verbose`, then `git apply --verbose --reject`, then
//! `patch --batch --fuzz=5 -p1 -i`, stopping at the first that exits 0; the method that worked is printed on a marker
//! line so the caller can record it.
//!
//! Two chains ([`ApplyChain`]):
//! - [`ApplyChain::Reference`] is the reference harness exactly (swebench 4.1.0, `GIT_APPLY_CMDS` and the loop in
//!   `run_instance`): the same commands in the same order, no clean-up between attempts, success = the first exit
//!   code 0, "did not apply" = none exited 0. Its known failure mode is kept on purpose: when `git apply --reject`
//!   applies some hunks and rejects others (exit 1), `patch --batch` then runs on the half-applied tree, takes the
//!   applied hunks for a reversed patch ("Assuming -R"), undoes them and fails, so a patch that `patch --fuzz` alone
//!   would apply is reported as not applied. Stray `*.rej` / `*.orig` files of failed attempts stay in the tree.
//! - [`ApplyChain::Hardened`] restores the tree (`git checkout -- .`, `git clean -fdq`, `*.rej` removed) after every
//!   failed attempt, so each method starts from the base commit.
//!
//! The reference runs each command with `exec_run` (no shell, the command split with `shlex`), as `root`, in
//! `/testbed`; here the commands run from one `bash -c` script as the container's user, in the task's repository
//! directory. The argv of each command is the same.

use swe_env_tools::shell_quote;

/// One method of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyMethod {
    /// The command, exactly as the reference's `GIT_APPLY_CMDS` entry; the patch path is appended.
    pub command: &'static str,
    /// The name recorded as the grading's `apply_method` (stable across swe-env versions).
    pub label: &'static str,
}

/// The methods tried, in order (swebench 4.1.0 `GIT_APPLY_CMDS`).
pub const APPLY_METHODS: [ApplyMethod; 3] = [
    ApplyMethod {
        command: "git apply --verbose",
        label: "git apply -v",
    },
    ApplyMethod {
        command: "git apply --verbose --reject",
        label: "git apply -v --reject",
    },
    ApplyMethod {
        command: "patch --batch --fuzz=5 -p1 -i",
        label: "patch --batch --fuzz=5 -p1",
    },
];

/// Which apply chain runs: the reference's, failure modes included, or one that cleans between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyChain {
    /// swebench 4.1.0 exactly: no clean-up between attempts (a half-applied `--reject` attempt is what `patch`
    /// sees).
    #[default]
    Reference,
    /// The tree is restored to the base commit after each failed attempt.
    Hardened,
}

/// Marker printed before the label of the method that applied.
const APPLIED_MARKER: &str = ">>>>> Applied Patch With: ";

/// Restores the tracked files, removes untracked ones and stray rejects (the hardened chain, between attempts).
const CLEAN_TREE: &str = "git checkout -q -- . 2>/dev/null; git clean -fdq 2>/dev/null; \
                          find . -name '*.rej' -delete 2>/dev/null\n";

/// A bash script applying `patch_path` in `repo_dir` with `chain`. Exits 0 after printing the marker line of the
/// method that applied, 1 after `>>>>> Patch Apply Failed`.
pub fn apply_chain_script(repo_dir: &str, patch_path: &str, chain: ApplyChain) -> String {
    let patch = shell_quote(patch_path);
    let mut script = format!("cd {} || exit 1\n", shell_quote(repo_dir));
    for method in APPLY_METHODS {
        let ApplyMethod { command, label } = method;
        script.push_str(&format!(
            "if {command} {patch} 2>&1; then echo '{APPLIED_MARKER}{label}'; exit 0; fi\n\
             echo 'Failed to apply patch to container: {command}'\n"
        ));
        if chain == ApplyChain::Hardened {
            script.push_str(CLEAN_TREE);
        }
    }
    script.push_str("echo '>>>>> Patch Apply Failed'\nexit 1\n");
    script
}

/// The label of the method that applied, from the script's output.
pub fn applied_method(log: &str) -> Option<String> {
    log.lines()
        .find_map(|line| line.strip_prefix(APPLIED_MARKER))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_method_reads_the_marker() {
        assert_eq!(
            applied_method("noise\n>>>>> Applied Patch With: git apply -v\n"),
            Some("git apply -v".into())
        );
        assert_eq!(
            applied_method(">>>>> Applied Patch With: patch --batch --fuzz=5 -p1\n"),
            Some("patch --batch --fuzz=5 -p1".into())
        );
        assert_eq!(applied_method(">>>>> Patch Apply Failed\n"), None);
    }

    #[test]
    fn only_the_hardened_chain_cleans_between_attempts() {
        let reference = apply_chain_script("/testbed", "/tmp/p", ApplyChain::Reference);
        let hardened = apply_chain_script("/testbed", "/tmp/p", ApplyChain::Hardened);
        for script in [&reference, &hardened] {
            assert!(script.contains("if git apply --verbose --reject '/tmp/p' 2>&1;"));
            assert!(script.contains("if patch --batch --fuzz=5 -p1 -i '/tmp/p' 2>&1;"));
        }
        assert!(!reference.contains("git clean"));
        assert!(!reference.contains("git checkout"));
        assert_eq!(hardened.matches("git clean -fdq").count(), 3);
    }
}
