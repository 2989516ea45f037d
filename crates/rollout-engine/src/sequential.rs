//! The always-valid sequential tests behind `with confidence … detect …` rules
//! (`docs/statistics.md`, "Sequential tests").
//!
//! Each evaluation adds the counts that arrived since the last one. For a relative rule
//! (`canary.r > K * stable.r`), given the requests `n₁`, `n₂` of an increment and its `m = x₁ + x₂`
//! events, the canary's share of the events is binomial with `π(θ) = θn₁ / (θn₁ + n₂)`, where
//! `θ` is the canary's rate over the stable's: a change of traffic share only changes `n₁, n₂`.
//! Its log likelihood ratio of `θ` against `θ₀` is
//! `x₁ ln(θ/θ₀) + m ln((θ₀n₁ + n₂) / (θn₁ + n₂))`. For an absolute rule (`canary.r > p₀`) the
//! canary's events are binomial in its requests, `x₁ ln(p/p₀) + (n₁ − x₁) ln((1−p)/(1−p₀))`.
//!
//! Two e-processes are kept, each a uniform mixture over a fixed grid of alternatives, summed
//! over every increment since the canary started (every step: evidence is pooled):
//! - **breach**, against the null `θ ≤ K`, alternatives above `K`;
//! - **safe**, against the null `θ ≥ D` (the `detect` regression), alternatives below `D`.
//!
//! Under its null each likelihood ratio, and so each mixture, is a nonnegative supermartingale
//! with expectation at most 1 (for `θ` inside the null the ratio's expectation is below 1 since
//! the binomial family has monotone likelihood ratios), so by Ville's inequality it ever reaches
//! `1/α` with probability at most `α`, at whatever time the rollout looks or stops.

use serde::{Deserialize, Serialize};

/// The breach alternatives, as multiples of the null's `K` (or `p₀`).
pub const BREACH_GRID: [f64; 6] = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0];
/// The safe alternatives, as multiples of `D`.
pub const SAFE_GRID: [f64; 5] = [0.9, 0.75, 0.6, 0.45, 0.3];

/// (alternative, null) pairs.
type Grid = Vec<(f64, f64)>;

/// What a rule's test has accumulated over the rollout.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Log likelihood ratio per [`BREACH_GRID`] point.
    pub breach: Vec<f64>,
    /// Log likelihood ratio per [`SAFE_GRID`] point.
    pub safe: Vec<f64>,
    /// The cumulative counts of the current period already added: canary events and trials,
    /// stable events and trials.
    pub seen: [u64; 4],
    /// The start of the period those counts are over.
    pub period: u64,
    /// Whether the last look excluded the `detect` regression.
    pub excluded: bool,
}

/// The hypotheses of one rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Model {
    /// The canary's rate over the stable's: breach means `θ > k`, safe means `θ < d`.
    Relative {
        /// The rule's factor.
        k: f64,
        /// The `detect` factor.
        d: f64,
    },
    /// The canary's rate alone: breach means `p > p0`, safe means `p < d`.
    Absolute {
        /// The rule's threshold.
        p0: f64,
        /// The `detect` rate.
        d: f64,
    },
}

/// The log likelihood ratio of `theta` against `null` for one relative increment.
pub fn relative_llr(theta: f64, null: f64, (x1, n1): (u64, u64), (x2, n2): (u64, u64)) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.0;
    }
    let (x1, n1, n2) = (x1 as f64, n1 as f64, n2 as f64);
    let m = x1 + x2 as f64;
    x1 * (theta / null).ln() + m * ((null * n1 + n2) / (theta * n1 + n2)).ln()
}

/// The log likelihood ratio of rate `p` against `null` for one absolute increment.
pub fn absolute_llr(p: f64, null: f64, (x1, n1): (u64, u64)) -> f64 {
    let x1 = x1.min(n1) as f64;
    let rest = n1 as f64 - x1;
    x1 * (p / null).ln() + rest * ((1.0 - p) / (1.0 - null)).ln()
}

/// `ln((1/J) Σ exp(l_j))`, computed without overflow.
pub fn log_mixture(llrs: &[f64]) -> f64 {
    let Some(max) = llrs.iter().copied().reduce(f64::max) else {
        return 0.0;
    };
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = llrs.iter().map(|l| (l - max).exp()).sum();
    max + sum.ln() - (llrs.len() as f64).ln()
}

impl Model {
    fn grids(self) -> (Grid, Grid) {
        // (alternative, null) per grid point; absolute rates stay below 1.
        match self {
            Model::Relative { k, d } => (
                BREACH_GRID.iter().map(|g| (k * g, k)).collect(),
                SAFE_GRID.iter().map(|g| (d * g, d)).collect(),
            ),
            Model::Absolute { p0, d } => (
                BREACH_GRID
                    .iter()
                    .map(|g| (p0 * g, p0))
                    .filter(|(p, _)| *p < 1.0)
                    .collect(),
                SAFE_GRID.iter().map(|g| (d * g, d)).collect(),
            ),
        }
    }

    fn llr(self, alt: f64, null: f64, inc: [u64; 4]) -> f64 {
        match self {
            Model::Relative { .. } => relative_llr(alt, null, (inc[0], inc[1]), (inc[2], inc[3])),
            Model::Absolute { .. } => absolute_llr(alt, null, (inc[0], inc[1])),
        }
    }
}

/// What one look concluded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Look {
    /// The breach e-value's log.
    pub log_breach: f64,
    /// The safe e-value's log.
    pub log_safe: f64,
    /// The breach is proven (`e ≥ 1/α`).
    pub breach: bool,
    /// The `detect` regression is excluded (`e ≥ 1/α`).
    pub excluded: bool,
}

impl Look {
    /// The anytime-valid p-value of "no breach": `min(1, 1/e)`.
    pub fn p_breach(&self) -> f64 {
        (-self.log_breach).exp().min(1.0)
    }

    /// The anytime-valid p-value of "a `detect` regression": `min(1, 1/e)`.
    pub fn p_safe(&self) -> f64 {
        (-self.log_safe).exp().min(1.0)
    }
}

impl Evidence {
    /// Adds the counts of the current period (`cumulative`, since `period`) that were not added
    /// yet, and looks at level `alpha`. Counts that went down (a query's extrapolation) add
    /// nothing until they pass what was added.
    pub fn look(&mut self, model: Model, period: u64, cumulative: [u64; 4], alpha: f64) -> Look {
        let (bg, sg) = model.grids();
        if self.breach.len() != bg.len() || self.safe.len() != sg.len() {
            self.breach = vec![0.0; bg.len()];
            self.safe = vec![0.0; sg.len()];
        }
        if self.period != period {
            self.period = period;
            self.seen = [0; 4];
        }
        let mut inc = [0u64; 4];
        for i in 0..4 {
            inc[i] = cumulative[i].saturating_sub(self.seen[i]);
        }
        // Events never exceed their trials within an increment.
        inc[0] = inc[0].min(inc[1]);
        inc[2] = inc[2].min(inc[3]);
        let grows = (0..4).all(|i| cumulative[i] >= self.seen[i]);
        if grows {
            self.seen = cumulative;
            for (l, (alt, null)) in self.breach.iter_mut().zip(&bg) {
                *l += model.llr(*alt, *null, inc);
            }
            for (l, (alt, null)) in self.safe.iter_mut().zip(&sg) {
                *l += model.llr(*alt, *null, inc);
            }
        }
        let threshold = (1.0 / alpha).ln();
        let log_breach = log_mixture(&self.breach);
        let log_safe = log_mixture(&self.safe);
        let breach = log_breach >= threshold;
        self.excluded = !breach && log_safe >= threshold;
        Look {
            log_breach,
            log_safe,
            breach,
            excluded: self.excluded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed independently (Python, `math.log`) from the formulas in the module doc.
    #[test]
    fn log_likelihood_ratios_match_independent_values() {
        // 12 of 1,000 canary requests failed, 30 of 9,000 stable ones; θ = 2 against 1.
        let l = relative_llr(2.0, 1.0, (12, 1_000), (30, 9_000));
        assert!((l - 4.314_738_614_937_697).abs() < 1e-12, "{l}");
        // θ = 1 against 2 (the safe test's direction).
        let l = relative_llr(1.0, 2.0, (12, 1_000), (30, 9_000));
        assert!((l + 4.314_738_614_937_696).abs() < 1e-12, "{l}");
        // Absolute: 3 of 200 at p = 2% against 1%.
        let l = absolute_llr(0.02, 0.01, (3, 200));
        assert!((l - 0.079_424_363_268_297_16).abs() < 1e-12, "{l}");
        // The mixture of ln 1, ln e and ln e²: ln((1 + e + e²)/3).
        let m = log_mixture(&[0.0, 1.0, 2.0]);
        assert!((m - 1.308_993_675_776_270_6).abs() < 1e-12, "{m}");
        assert_eq!(log_mixture(&[]), 0.0);
    }

    #[test]
    fn no_requests_and_no_events_are_no_evidence() {
        assert_eq!(relative_llr(3.0, 1.5, (0, 0), (5, 900)), 0.0);
        assert_eq!(relative_llr(3.0, 1.5, (0, 100), (0, 900)), 0.0);
        let mut e = Evidence::default();
        let look = e.look(Model::Relative { k: 1.5, d: 2.0 }, 0, [0, 0, 0, 0], 0.05);
        assert_eq!((look.log_breach, look.log_safe), (0.0, 0.0));
        assert!(!look.breach && !look.excluded);
        // Requests without errors on both sides carry no evidence about the ratio either.
        let look = e.look(
            Model::Relative { k: 1.5, d: 2.0 },
            0,
            [0, 5_000, 0, 45_000],
            0.05,
        );
        assert_eq!((look.log_breach, look.log_safe), (0.0, 0.0));
    }

    #[test]
    fn increments_are_added_once_and_a_new_period_starts_from_zero() {
        let model = Model::Relative { k: 1.0, d: 2.0 };
        let mut once = Evidence::default();
        once.look(model, 0, [24, 2_000, 60, 18_000], 0.05);
        let mut twice = Evidence::default();
        twice.look(model, 0, [12, 1_000, 30, 9_000], 0.05);
        twice.look(model, 0, [24, 2_000, 60, 18_000], 0.05);
        // The same counts in two increments at the same share: the same evidence.
        for (a, b) in once.breach.iter().zip(&twice.breach) {
            assert!((a - b).abs() < 1e-9, "{a} {b}");
        }
        // A count that went down adds nothing and is not double counted later.
        let before = twice.breach.clone();
        twice.look(model, 0, [23, 2_100, 60, 18_900], 0.05);
        assert_eq!(twice.breach, before);
        assert_eq!(twice.seen, [24, 2_000, 60, 18_000]);
        // The next step's window starts again from zero: its counts are new evidence, added
        // to what the rollout has.
        twice.look(model, 7, [12, 1_000, 30, 9_000], 0.05);
        assert_eq!(twice.seen, [12, 1_000, 30, 9_000]);
        assert!(twice.breach[0] > before[0]);
    }

    #[test]
    fn a_clear_regression_is_a_breach_and_a_healthy_canary_is_excluded_from_detect() {
        // 5% against 0.5% errors over 2,000 canary requests: a breach of θ ≤ 1.5.
        let model = Model::Relative { k: 1.5, d: 2.0 };
        let mut bad = Evidence::default();
        let look = bad.look(model, 0, [100, 2_000, 90, 18_000], 0.05);
        assert!(look.breach && !look.excluded, "{look:?}");
        assert!(look.p_breach() < 1e-6);
        // The same rate on both sides over 20,000 canary requests: θ ≥ 2 is excluded.
        let mut healthy = Evidence::default();
        let look = healthy.look(model, 0, [100, 20_000, 900, 180_000], 0.05);
        assert!(!look.breach && look.excluded, "{look:?}");
        // Absolute: 0.5% against a 1% threshold, detect 2%.
        let mut abs = Evidence::default();
        let look = abs.look(
            Model::Absolute { p0: 0.01, d: 0.02 },
            0,
            [10, 2_000, 0, 0],
            0.05,
        );
        assert!(!look.breach && look.excluded, "{look:?}");
    }
}
