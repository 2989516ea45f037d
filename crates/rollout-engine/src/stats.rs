//! The statistics behind `with confidence` rules. See `docs/statistics.md` for the derivation.
//!
//! * [`binomial_sf`]: `P(X >= k)` for `X ~ Binomial(n, p)`, exact, through the regularised
//!   incomplete beta function (Lentz's continued fraction).
//! * [`rate_ratio_p_value`]: the exact conditional test that a canary's event rate exceeds `K ×`
//!   the stable's, from counts (Poisson model, conditioned on the total number of events).
//! * [`alpha_for_look`]: alpha spending over an unbounded number of looks, `α / (k (k + 1))`,
//!   which sums to `α`, so the chance of a false breach over the whole rollout stays below `α`.

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, n = 9; relative error below 1e-13).
pub fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection.
        return std::f64::consts::PI.ln()
            - (std::f64::consts::PI * x).sin().abs().ln()
            - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + G + 0.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised incomplete beta function `I_x(a, b)`.
pub fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0) {
        (ln_front.exp() * beta_cf(x, a, b) / a).clamp(0.0, 1.0)
    } else {
        (1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b).clamp(0.0, 1.0)
    }
}

/// Continued fraction for the incomplete beta (modified Lentz).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=10_000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        h *= d * c;
        let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
        d = 1.0 + aa * d;
        if d.abs() < TINY {
            d = TINY;
        }
        c = 1.0 + aa / c;
        if c.abs() < TINY {
            c = TINY;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < EPS {
            break;
        }
    }
    h
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`.
pub fn binomial_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    inc_beta(p, k as f64, (n - k + 1) as f64)
}

/// One-sided p-value of "the canary's event rate exceeds `factor ×` the stable's".
///
/// Canary: `x1` events in `n1` trials; stable: `x2` in `n2`. With rare events each count is close
/// to Poisson, and conditioned on `m = x1 + x2`, `x1 ~ Binomial(m, π)` with
/// `π = factor·n1 / (factor·n1 + n2)` at the boundary of the null hypothesis
/// `rate1 <= factor · rate2`. The p-value is `P(Binomial(m, π) >= x1)`. Exact for Poisson counts,
/// conservative when events are not rare.
pub fn rate_ratio_p_value(x1: u64, n1: u64, x2: u64, n2: u64, factor: f64) -> f64 {
    let m = x1 + x2;
    let pi = factor * n1 as f64 / (factor * n1 as f64 + n2 as f64);
    binomial_sf(x1, m, pi)
}

/// One-sided p-value of "the canary's proportion exceeds `threshold`": `P(Binomial(n, t) >= x)`.
pub fn proportion_p_value(x: u64, n: u64, threshold: f64) -> f64 {
    binomial_sf(x, n, threshold)
}

/// The significance level of the `k`-th look (1-based) when `alpha` is spent over an unbounded
/// number of looks: `alpha / (k (k + 1))`. The levels sum to `alpha`.
pub fn alpha_for_look(alpha: f64, k: u32) -> f64 {
    let k = f64::from(k.max(1));
    alpha / (k * (k + 1.0))
}

/// Standard normal CDF (Abramowitz-Stegun 7.1.26 via erfc; absolute error below 1.5e-7).
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Inverse of the standard normal CDF (Acklam's rational approximation, relative error 1.15e-9).
pub fn normal_quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    if p < LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-300)
    }

    #[test]
    fn ln_gamma_matches_factorials() {
        let mut f = 1.0f64;
        for n in 1..30u32 {
            f *= f64::from(n);
            assert!(close(ln_gamma(f64::from(n) + 1.0), f.ln(), 1e-12), "{n}");
        }
        assert!(close(
            ln_gamma(0.5),
            std::f64::consts::PI.sqrt().ln(),
            1e-12
        ));
    }

    #[test]
    fn binomial_tail_matches_direct_sums() {
        for &(n, p) in &[(10u64, 0.3f64), (50, 0.02), (200, 0.5), (1000, 0.005)] {
            let mut pmf = Vec::new();
            for k in 0..=n {
                let ln = ln_gamma(n as f64 + 1.0)
                    - ln_gamma(k as f64 + 1.0)
                    - ln_gamma((n - k) as f64 + 1.0)
                    + k as f64 * p.ln()
                    + (n - k) as f64 * (1.0 - p).ln();
                pmf.push(ln.exp());
            }
            for k in [0, 1, 2, n / 10, n / 2, n] {
                let direct: f64 = pmf[k as usize..].iter().sum();
                assert!(
                    close(binomial_sf(k, n, p), direct, 1e-9) || (direct < 1e-250),
                    "n={n} p={p} k={k}: {} vs {direct}",
                    binomial_sf(k, n, p)
                );
            }
        }
    }

    #[test]
    fn rate_ratio_test_behaves() {
        // No events at all: no evidence.
        assert_eq!(rate_ratio_p_value(0, 1000, 0, 9000, 1.5), 1.0);
        // 30 canary errors in 1000 vs 45 in 9000 (3% vs 0.5%): overwhelming.
        assert!(rate_ratio_p_value(30, 1000, 45, 9000, 1.5) < 1e-6);
        // Equal rates: not significant.
        assert!(rate_ratio_p_value(5, 1000, 45, 9000, 1.5) > 0.3);
    }

    #[test]
    fn alpha_spending_sums_to_alpha() {
        let total: f64 = (1..1_000_000).map(|k| alpha_for_look(0.05, k)).sum();
        assert!(close(total, 0.05, 1e-5), "{total}");
    }

    #[test]
    fn normal_functions_invert() {
        for p in [0.001, 0.025, 0.05, 0.5, 0.95, 0.975, 0.999] {
            assert!(close(normal_cdf(normal_quantile(p)), p, 1e-6), "{p}");
        }
        assert!(close(normal_quantile(0.975), 1.959_963_985, 1e-8));
    }
}
