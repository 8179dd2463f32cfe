//! The patch apply chain, as the reference harness falls back: `git apply -v`, then `git apply -v --reject`, then
//! `patch --batch --fuzz=5 -p1`. Each attempt starts from a clean tree; the method that worked is printed on a
//! marker line so the caller can record it.

/// The methods tried, in order.
pub const APPLY_METHODS: [&str; 3] = [
    "git apply -v",
    "git apply -v --reject",
    "patch --batch --fuzz=5 -p1 -i",
];

/// Marker printed before the name of the method that applied.
const APPLIED_MARKER: &str = ">>>>> Applied Patch With: ";

/// A bash script applying `patch_path` in `repo_dir` with the fallback chain.
pub fn apply_chain_script(repo_dir: &str, patch_path: &str) -> String {
    let mut script = format!("cd '{}' || exit 1\n", repo_dir.replace('\'', "'\\''"));
    for method in APPLY_METHODS {
        script.push_str(&format!(
            "if {method} '{patch}' 2>&1; then echo '{APPLIED_MARKER}{method}'; exit 0; fi\n\
             git checkout -q -- . 2>/dev/null; git clean -fdq 2>/dev/null; find . -name '*.rej' -delete 2>/dev/null\n",
            patch = patch_path.replace('\'', "'\\''"),
        ));
    }
    script.push_str("echo '>>>>> Patch Apply Failed'\nexit 1\n");
    script
}

/// The method that applied, from the script's output.
pub fn applied_method(log: &str) -> Option<String> {
    log.lines()
        .find_map(|line| line.strip_prefix(APPLIED_MARKER))
        .map(|m| m.trim_end_matches(" -i").to_owned())
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
            applied_method(">>>>> Applied Patch With: patch --batch --fuzz=5 -p1 -i\n"),
            Some("patch --batch --fuzz=5 -p1".into())
        );
        assert_eq!(applied_method(">>>>> Patch Apply Failed\n"), None);
        assert!(apply_chain_script("/testbed", "/tmp/p").contains("git apply -v --reject '/tmp/p'"));
    }
}
