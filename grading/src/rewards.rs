//! Episode rewards from a grading outcome and a patch similarity: the execution reward, SWE-RL's
//! similarity reward and CWM-style shaping that gives a failing patch partial credit for being
//! close to the gold patch.

use serde::{Deserialize, Serialize};

/// Reward settings. Defaults: `+1` resolved, `-1` not resolved, shaping threshold `0.5`, shaping
/// weight `0.5`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RewardConfig {
    /// Execution reward of a resolved instance (default `1.0`).
    pub resolved_reward: f64,
    /// Execution reward of an unresolved instance, including ungradable ones (default `-1.0`;
    /// use `0.0` for a 1/0 reward).
    pub unresolved_reward: f64,
    /// Smallest SWE-RL similarity at which an unresolved patch earns partial credit in the shaped
    /// reward (default `0.5`).
    pub shaped_similarity_threshold: f64,
    /// How much of the gap between the unresolved and resolved rewards a perfectly similar but
    /// failing patch recovers (default `0.5`; `0.0` turns shaping off). Keep it below `1.0` so a
    /// failing patch never earns as much as a passing one.
    pub shaped_weight: f64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            resolved_reward: 1.0,
            unresolved_reward: -1.0,
            shaped_similarity_threshold: 0.5,
            shaped_weight: 0.5,
        }
    }
}

/// The rewards of one episode, recorded with its trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rewards {
    /// Whether the grading resolved the instance.
    pub resolved: bool,
    /// `resolved_reward` if resolved, else `unresolved_reward`.
    pub execution: f64,
    /// SWE-RL similarity reward in `[0, 1]`, or `-1.0` for an empty/unparsable patch; `None`
    /// when no gold patch was available.
    pub similarity: Option<f64>,
    /// The shaped reward (see [`shaped_reward`]); equals `execution` without a similarity.
    pub shaped: f64,
}

/// Execution reward: `resolved_reward` or `unresolved_reward`.
pub fn execution_reward(resolved: bool, config: &RewardConfig) -> f64 {
    if resolved {
        config.resolved_reward
    } else {
        config.unresolved_reward
    }
}

/// CWM-style shaped reward:
///
/// ```text
/// resolved                                → resolved_reward
/// not resolved, similarity ≥ threshold    → unresolved_reward
///                                            + shaped_weight · similarity · (resolved_reward − unresolved_reward)
/// otherwise                               → unresolved_reward
/// ```
///
/// With the defaults a failing patch with similarity `0.8` gets `-1 + 0.5 · 0.8 · 2 = -0.2`. CWM
/// describes shaping failing SWE-RL episodes by similarity to the gold patch above a threshold;
/// its exact constants were not available to us, hence every number here is configurable.
pub fn shaped_reward(resolved: bool, similarity: Option<f64>, config: &RewardConfig) -> f64 {
    if resolved {
        return config.resolved_reward;
    }
    match similarity {
        Some(similarity) if similarity >= config.shaped_similarity_threshold => {
            config.unresolved_reward
                + config.shaped_weight
                    * similarity
                    * (config.resolved_reward - config.unresolved_reward)
        }
        _ => config.unresolved_reward,
    }
}

/// All rewards of an episode from its grading outcome and (optional) SWE-RL similarity.
pub fn compute_rewards(resolved: bool, similarity: Option<f64>, config: &RewardConfig) -> Rewards {
    Rewards {
        resolved,
        execution: execution_reward(resolved, config),
        similarity,
        shaped: shaped_reward(resolved, similarity, config),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_plus_minus_one() {
        let config = RewardConfig::default();
        assert_eq!(execution_reward(true, &config), 1.0);
        assert_eq!(execution_reward(false, &config), -1.0);
    }

    #[test]
    fn shaping_gives_partial_credit_only_above_threshold() {
        let config = RewardConfig::default();
        assert_eq!(
            shaped_reward(false, Some(0.8), &config),
            -1.0 + 0.5 * 0.8 * 2.0
        );
        assert_eq!(shaped_reward(false, Some(0.49), &config), -1.0);
        assert_eq!(shaped_reward(false, Some(-1.0), &config), -1.0);
        assert_eq!(shaped_reward(false, None, &config), -1.0);
        assert_eq!(shaped_reward(true, Some(0.1), &config), 1.0);
    }

    #[test]
    fn config_deserialises_with_defaults_for_missing_fields() {
        let config: RewardConfig = serde_json::from_str(r#"{"unresolved_reward": 0.0}"#).unwrap();
        assert_eq!(config.unresolved_reward, 0.0);
        assert_eq!(config.resolved_reward, 1.0);
        let rewards = compute_rewards(false, Some(1.0), &config);
        assert_eq!(rewards.shaped, 0.5);
        assert_eq!(rewards.execution, 0.0);
    }
}
