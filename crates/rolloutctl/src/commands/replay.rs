use rollout_runner::replay::{self, ReplayConfig};

use super::Exit;
use crate::cli::ReplayArgs;
use crate::{files, live};

/// Parses `2026-11-29T04:00:00Z` or unix seconds into ms.
pub fn parse_time(s: &str) -> Option<u64> {
    if let Ok(secs) = s.parse::<f64>() {
        return (secs >= 0.0).then_some((secs * 1000.0) as u64);
    }
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut h = time.split(':').map(|x| x.parse::<f64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next().flatten().unwrap_or(0.0));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss;
    (secs >= 0.0).then_some((secs * 1000.0) as u64)
}

pub fn run(args: &ReplayArgs) -> Exit {
    let machine = match files::load_policy(&args.policy) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let (Some(from), Some(to)) = (parse_time(&args.from), parse_time(&args.to)) else {
        eprintln!(
            "error: --from and --to take RFC 3339 times (2026-11-29T04:00:00Z) or unix seconds"
        );
        return Exit::Usage;
    };
    if to <= from {
        eprintln!("error: --to must be after --from");
        return Exit::Usage;
    }
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        let policy = machine.policy().clone();
        let (canary, stable) = match (&args.canary, &args.stable) {
            (Some(c), Some(s)) => (c.clone(), s.clone()),
            _ => {
                // The revisions the runner recorded in the ModelRollout's status.
                let client = match rollout_runner::client(args.kubeconfig.as_deref(), None).await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: give --canary and --stable, or a cluster to read them from: {e}");
                        return Exit::Usage;
                    }
                };
                let report = match rollout_runner::operate::report(&client, &policy.target.namespace, &policy.target.name).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e}; give --canary and --stable");
                        return Exit::Failed;
                    }
                };
                let st = report.rollout.status.unwrap_or_default();
                match (args.canary.clone().or(st.canary_revision), args.stable.clone().or(st.stable_revision)) {
                    (Some(c), Some(s)) => (c, s),
                    _ => {
                        eprintln!("error: the ModelRollout records no canary and stable revisions yet; give --canary and --stable");
                        return Exit::Usage;
                    }
                }
            }
        };
        let on_decision = live::sink(args.output);
        let cfg = ReplayConfig {
            prometheus_url: args.prometheus_url.clone().unwrap_or_else(|| policy.prometheus.url.clone()),
            policy,
            from_ms: from,
            to_ms: to,
            canary,
            stable,
            step_s: 1.0,
            on_decision,
        };
        match replay::replay(cfg).await {
            Ok(r) => {
                eprintln!(
                    "replay: {}{} ({} queries)",
                    r.outcome.as_str(),
                    r.rollback_at.map_or(String::new(), |t| format!(", rollback at {:.3}", t as f64 / 1000.0)),
                    r.queries
                );
                r.outcome.into()
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Failed
            }
        }
    })
}
