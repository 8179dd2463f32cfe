//! Per-episode token and cost limits and the price table they are computed with (USD per million tokens, per
//! served model name), like mini-swe-agent's cost limit.
//!
//! An episode's spend is the sum over all its model calls of prompt + completion tokens (as the server reported
//! them) and of their price. The model loop checks the limits before each call (a call is not made once a limit is
//! reached) and after each (the episode ends with `token_limit` / `cost_limit` as soon as one is reached).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trajectory::EpisodeStatus;

/// Per-episode limits on what the model calls consume; both off by default.
///
/// ```yaml
/// limits: {tokens: 200000, cost_usd: 0.5}
/// prices:
///   my-served-model: {input_per_mtok: 0.5, output_per_mtok: 1.5}
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most prompt + completion tokens summed over the episode's model calls (default: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Most USD spent over the episode's model calls, priced with [`ModelPrice`] (default: no limit). Needs a
    /// price for the served model name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
}

/// What one served model costs, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// USD per million prompt tokens.
    pub input_per_mtok: f64,
    /// USD per million completion tokens.
    pub output_per_mtok: f64,
}

/// Prices by served model name (the `--model` name).
pub type PriceTable = BTreeMap<String, ModelPrice>;

const TOKENS_PER_MTOK: f64 = 1_000_000.0;

impl ModelPrice {
    /// The cost of one call of `prompt_tokens` in and `completion_tokens` out, USD.
    pub fn cost_usd(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.input_per_mtok
            + completion_tokens as f64 * self.output_per_mtok)
            / TOKENS_PER_MTOK
    }
}

impl Limits {
    /// Whether neither limit is set (the default).
    pub fn is_unlimited(&self) -> bool {
        self.tokens.is_none() && self.cost_usd.is_none()
    }

    /// Checks the values: each limit positive (and the cost finite); the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.tokens == Some(0) {
            return Err(
                "limits.tokens is 0, so no model call could be made; leave it out for no limit"
                    .into(),
            );
        }
        if let Some(cost) = self.cost_usd {
            if !(cost.is_finite() && cost > 0.0) {
                return Err(format!(
                    "limits.cost_usd is {cost}; give a positive number of USD (e.g. 0.5) or leave it out"
                ));
            }
        }
        Ok(())
    }

    /// The price to charge `model` with: `Ok(None)` when there is no price and no cost limit (cost is then not
    /// recorded); an error naming the model and how to add a price when a cost limit is set without one.
    pub fn price_for<'a>(
        &self,
        prices: &'a PriceTable,
        model: &str,
    ) -> Result<Option<&'a ModelPrice>, String> {
        match (prices.get(model), self.cost_usd) {
            (Some(price), _) => Ok(Some(price)),
            (None, None) => Ok(None),
            (None, Some(limit)) => Err(format!(
                "a cost limit (${limit}) is set but there is no price for model {model:?}; add it to the agent \
                 config, e.g. `prices: {{\"{model}\": {{input_per_mtok: 0.5, output_per_mtok: 1.5}}}}` (USD per \
                 million tokens), or drop the cost limit"
            )),
        }
    }

    /// Which limit `spent` has reached, if any (a limit is reached at or above its value).
    pub fn reached(&self, spent: &Spend) -> Option<EpisodeStatus> {
        if self.tokens.is_some_and(|limit| spent.tokens >= limit) {
            return Some(EpisodeStatus::TokenLimit);
        }
        if let (Some(limit), Some(cost)) = (self.cost_usd, spent.cost_usd) {
            if cost >= limit {
                return Some(EpisodeStatus::CostLimit);
            }
        }
        None
    }

    /// The episode-end detail for a limit ending.
    pub fn detail(&self, status: EpisodeStatus, spent: &Spend) -> String {
        let cost = spent
            .cost_usd
            .map_or_else(|| "unpriced".to_owned(), |cost| format!("${cost:.6}"));
        match status {
            EpisodeStatus::TokenLimit => format!(
                "the token limit ({} tokens) was reached: {} tokens used, {cost}",
                self.tokens.unwrap_or_default(),
                spent.tokens
            ),
            _ => format!(
                "the cost limit (${}) was reached: {cost} spent, {} tokens used",
                self.cost_usd.unwrap_or_default(),
                spent.tokens
            ),
        }
    }
}

/// What an episode's model calls consumed so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spend {
    /// Prompt + completion tokens over all calls.
    pub tokens: u64,
    /// USD over all calls, when the model has a price.
    pub cost_usd: Option<f64>,
}

impl Spend {
    /// Adds one call; returns its cost (USD) when the model has a price.
    pub fn add_call(
        &mut self,
        price: Option<&ModelPrice>,
        prompt_tokens: u64,
        completion_tokens: u64,
    ) -> Option<f64> {
        self.tokens += prompt_tokens + completion_tokens;
        let cost = price.map(|price| price.cost_usd(prompt_tokens, completion_tokens))?;
        self.cost_usd = Some(self.cost_usd.unwrap_or(0.0) + cost);
        Some(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price() -> ModelPrice {
        ModelPrice {
            input_per_mtok: 0.5,
            output_per_mtok: 1.5,
        }
    }

    #[test]
    fn price_math_is_exact() {
        assert_eq!(price().cost_usd(1_000_000, 0), 0.5);
        assert_eq!(price().cost_usd(0, 1_000_000), 1.5);
        assert_eq!(price().cost_usd(2_000, 400), 0.0016);
        let mut spend = Spend::default();
        assert_eq!(spend.add_call(Some(&price()), 1_000, 200), Some(0.0008));
        assert_eq!(spend.add_call(Some(&price()), 1_000, 200), Some(0.0008));
        assert_eq!(spend.tokens, 2_400);
        assert_eq!(spend.cost_usd, Some(0.0016));
        let mut unpriced = Spend::default();
        assert_eq!(unpriced.add_call(None, 10, 5), None);
        assert_eq!(unpriced.tokens, 15);
        assert_eq!(unpriced.cost_usd, None);
    }

    #[test]
    fn limits_are_reached_at_their_value() {
        let limits = Limits {
            tokens: Some(1_000),
            cost_usd: Some(0.01),
        };
        let under = Spend {
            tokens: 999,
            cost_usd: Some(0.009),
        };
        assert_eq!(limits.reached(&under), None);
        let at_tokens = Spend {
            tokens: 1_000,
            ..under
        };
        assert_eq!(limits.reached(&at_tokens), Some(EpisodeStatus::TokenLimit));
        let at_cost = Spend {
            cost_usd: Some(0.01),
            ..under
        };
        assert_eq!(limits.reached(&at_cost), Some(EpisodeStatus::CostLimit));
        assert_eq!(
            limits.detail(EpisodeStatus::CostLimit, &at_cost),
            "the cost limit ($0.01) was reached: $0.010000 spent, 999 tokens used"
        );
        assert_eq!(Limits::default().reached(&at_cost), None);
    }

    #[test]
    fn a_cost_limit_needs_a_price_for_the_served_model() {
        let prices: PriceTable = [("priced".to_owned(), price())].into();
        let cost_limited = Limits {
            cost_usd: Some(1.0),
            ..Limits::default()
        };
        assert_eq!(
            cost_limited.price_for(&prices, "priced"),
            Ok(Some(&price()))
        );
        let error = cost_limited.price_for(&prices, "unpriced").unwrap_err();
        assert!(
            error.contains("no price for model \"unpriced\"") && error.contains("prices:"),
            "{error}"
        );
        assert_eq!(Limits::default().price_for(&prices, "unpriced"), Ok(None));
        assert!(Limits {
            tokens: Some(0),
            ..Limits::default()
        }
        .validate()
        .is_err());
        assert!(Limits {
            cost_usd: Some(f64::NAN),
            ..Limits::default()
        }
        .validate()
        .is_err());
        assert!(cost_limited.validate().is_ok());
    }
}
