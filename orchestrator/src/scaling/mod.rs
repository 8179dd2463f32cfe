//! Test-time scaling (`run-benchmark --samples K [--testgen-samples M] [--select …]`): K independent solving
//! rollouts per instance (own episode, seed and trajectory, all graded), M test-generation episodes whose scripts
//! are checked at the base commit, the candidate patches run against the valid scripts, and one choice per
//! selector; report.json holds the primary selector's choices in the harness schema, `scaling.json` pass@1,
//! pass@K, selected@K and the cost.

pub mod report;
mod runner;
pub mod select;
pub mod store;

use serde_json::{json, Value};

use crate::benchmark::AgentSpec;
pub use crate::grade::testgen;
use select::Selector;
use testgen::TestgenLimits;

pub use runner::{run_scaled, ScaledOutcome};

/// Operator maximum of `--samples` and `--testgen-samples`.
pub const MAX_SAMPLES: u32 = 64;

/// What a scaled run does on top of the benchmark's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingConfig {
    /// K: solving rollouts per instance.
    pub samples: u32,
    /// M: test-generation episodes per instance.
    pub testgen_samples: u32,
    /// The selectors, in order; the first that is not `oracle` is the primary (report.json).
    pub selectors: Vec<Selector>,
    /// Base seed of the rollouts' seeds.
    pub seed: u64,
    /// The test-generation episode's user prompt (placeholders `issue`, `repo_root`).
    pub testgen_template: String,
    /// Limits of the generated tests' runs.
    pub limits: TestgenLimits,
}

/// Why a scaling configuration cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScalingConfigError {
    /// A bad combination of options; the message says which and how to fix it.
    #[error("{0}")]
    Invalid(String),
}

impl ScalingConfig {
    /// The selector whose choices are report.json: the first that is not `oracle`.
    pub fn primary(&self) -> Selector {
        self.selectors
            .iter()
            .copied()
            .find(|selector| *selector != Selector::Oracle)
            .unwrap_or(Selector::Majority)
    }

    /// Checks the combination against the agent.
    pub fn validate(&self, agent: &AgentSpec) -> Result<(), ScalingConfigError> {
        let invalid = |text: &str| Err(ScalingConfigError::Invalid(text.to_owned()));
        if self.selectors.iter().all(|s| *s == Selector::Oracle) {
            return invalid(
                "--select oracle cannot choose the reported patches (it reads the real tests): add `tests` or \
                 `majority`, e.g. --select majority,oracle",
            );
        }
        if self.selectors.contains(&Selector::Tests) && self.testgen_samples == 0 {
            return invalid(
                "--select tests needs generated tests: add --testgen-samples M (e.g. --testgen-samples 4), or \
                 use --select majority",
            );
        }
        if !(1..=MAX_SAMPLES).contains(&self.samples) || self.testgen_samples > MAX_SAMPLES {
            return Err(ScalingConfigError::Invalid(format!(
                "--samples must be 1..={MAX_SAMPLES} and --testgen-samples 0..={MAX_SAMPLES}"
            )));
        }
        match agent {
            AgentSpec::Model(model) if self.testgen_samples > 0
                && !self.testgen_template.split_whitespace().collect::<String>().contains("{{issue}}") =>
            {
                return invalid(
                    "the test-generation prompt (--testgen-prompt) never shows the issue: put {{issue}} in it",
                )
            }
            AgentSpec::Model(model) => {
                let mut config = model.config.clone();
                config.prompts.user_template = self.testgen_template.clone();
                if let Err(error) = config.validate() {
                    return Err(ScalingConfigError::Invalid(format!(
                        "the test-generation prompt (--testgen-prompt) is not a valid template: {error}"
                    )));
                }
            }
            AgentSpec::Gold | AgentSpec::Empty if self.testgen_samples > 0 => {
                return invalid(
                    "--testgen-samples needs a model agent (--model-url URL --model NAME): the built-in agents \
                     cannot write tests",
                )
            }
            AgentSpec::Gold | AgentSpec::Empty => {}
            AgentSpec::Predictions { .. } => {
                return invalid(
                    "given predictions cannot be sampled: --samples and --testgen-samples need an agent",
                )
            }
        }
        Ok(())
    }

    /// The result-changing settings recorded in manifest.json (`settings.scaling`).
    pub fn settings(&self) -> Value {
        json!({
            "samples": self.samples,
            "testgen_samples": self.testgen_samples,
            "selectors": self.selectors,
            "seed": self.seed,
            // What only changes generated tests is recorded only when there are some.
            "testgen": (self.testgen_samples > 0).then(|| json!({
                "template_sha256": crate::trajectory::digest::sha256_hex(self.testgen_template.as_bytes()),
                "timeout_secs": self.limits.timeout.as_secs(),
                "max_script_bytes": self.limits.max_script_bytes,
            })),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_is_a_valid_user_template_and_asks_for_the_protocol() {
        let mut config = crate::agent::ModelAgentConfig::default();
        config.prompts.user_template = testgen::DEFAULT_TESTGEN_TEMPLATE.to_owned();
        config.validate().unwrap();
        let user = config
            .prompts
            .render_user(&swe_env_model::UserPromptInputs {
                issue: "merge() drops ranges\n".into(),
                repo_root: "/testbed".into(),
            })
            .unwrap();
        assert!(user.contains("<issue_description>\nmerge() drops ranges\n</issue_description>"));
        assert!(!user.contains("{{"), "{user}");
        for needle in [
            "`Issue reproduced`",
            "`Issue resolved`",
            "`Other issues`",
            "/testbed/test_issue.py",
            "submit tool",
            "final report",
            "must not modify",
        ] {
            assert!(user.contains(needle), "missing {needle}: {user}");
        }
        // A placeholder the user template does not know is refused (the check can fail).
        config.prompts.user_template =
            format!("{} {{{{patch}}}}", testgen::DEFAULT_TESTGEN_TEMPLATE);
        assert!(config.validate().is_err());
    }
}
