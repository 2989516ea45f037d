//! One Prometheus query per tick for every rollout that asks the same question.
//!
//! A controller drives many rollouts; most ask the same Prometheus the same query for different
//! revisions. Each such query (same Prometheus and credentials, same PromQL once the revision
//! is left out, so the same template, window and namespace) is asked at most once per tick, in
//! its shared form ([`crate::share`]): one answer with a series per revision, fanned out to every
//! rollout and both arms. A rollout takes an answer that is younger than its tick; a query that
//! is already being asked is waited for, not asked again. Queries the rule does not cover are
//! asked per rollout as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollout_engine::Sample;

use crate::Millis;
use crate::metrics::Prom;
use crate::share::{self, NotShared, SharedQuery};
use crate::telemetry::Telemetry;

/// Each revision's sample, or the error every rollout asking gets.
type Answer = Result<HashMap<String, Sample>, String>;

struct Asked {
    at: Millis,
    answer: tokio::sync::OnceCell<Arc<Answer>>,
}

/// How many distinct rendered queries the plan cache keeps before it starts over.
const PLANS: usize = 10_000;

/// The controller's shared queries.
pub struct Fanout {
    tick: Duration,
    asked: Mutex<HashMap<String, Arc<Asked>>>,
    plans: Mutex<HashMap<String, Result<Arc<SharedQuery>, NotShared>>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("tick", &self.tick).finish()
    }
}

impl Fanout {
    /// Queries shared for up to `tick` (a rollout with a shorter evaluation interval takes a
    /// tenth of its interval instead).
    pub fn new(tick: Duration) -> Fanout {
        Fanout {
            tick,
            asked: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
        }
    }

    /// How old an answer a rollout evaluated every `interval` takes.
    pub fn max_age(&self, interval: Duration) -> Millis {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        ms(self.tick).min(ms(interval) / 10)
    }

    /// The shared form of a query rendered with [`share::SENTINEL`] as its revision (cached).
    pub fn plan(&self, rendered: &str) -> Result<Arc<SharedQuery>, NotShared> {
        if let Some(p) = self
            .plans
            .lock()
            .ok()
            .and_then(|m| m.get(rendered).cloned())
        {
            return p;
        }
        let p = share::shared_text(rendered).map(Arc::new);
        if let Ok(mut m) = self.plans.lock() {
            if m.len() >= PLANS {
                m.clear();
            }
            m.insert(rendered.to_string(), p.clone());
        }
        p
    }

    /// The sample of `revision` from the shared answer asked at most `max_age` ago, asking it
    /// now if there is none.
    pub async fn sample(
        &self,
        prom: &Prom,
        query: &SharedQuery,
        revision: &str,
        now: Millis,
        max_age: Millis,
        telemetry: Option<&Arc<Telemetry>>,
    ) -> Sample {
        let key = format!("{}\n{}", prom.identity, query.promql);
        let asked = {
            let Ok(mut m) = self.asked.lock() else {
                return Sample::Error {
                    message: "the shared query table is poisoned".into(),
                };
            };
            match m.get(&key) {
                Some(a) if now.saturating_sub(a.at) < max_age.max(1) && a.at <= now => a.clone(),
                _ => {
                    let horizon = u64::try_from(self.tick.as_millis()).unwrap_or(u64::MAX);
                    m.retain(|_, a| now.saturating_sub(a.at) < horizon.max(max_age));
                    let a = Arc::new(Asked {
                        at: now,
                        answer: tokio::sync::OnceCell::new(),
                    });
                    m.insert(key, a.clone());
                    a
                }
            }
        };
        let answer = asked
            .answer
            .get_or_init(|| async {
                let started = std::time::Instant::now();
                let res = prom.query_series(&query.promql, &query.label, now).await;
                if let Some(t) = telemetry {
                    t.query(started.elapsed().as_secs_f64(), res.is_err());
                }
                Arc::new(res.map(|series| split(query, series)))
            })
            .await;
        match answer.as_ref() {
            Ok(by_revision) => by_revision.get(revision).cloned().unwrap_or(Sample::NoData),
            Err(message) => Sample::Error {
                message: message.clone(),
            },
        }
    }
}

/// Each revision's one series; a revision with several is an error, as a rollout's own query
/// returning several series is.
fn split(query: &SharedQuery, series: Vec<(Option<String>, Sample)>) -> HashMap<String, Sample> {
    let mut out: HashMap<String, (usize, Sample)> = HashMap::new();
    for (value, sample) in series {
        let Some(revision) = value.as_deref().and_then(|v| query.revision_of(v)) else {
            continue;
        };
        out.entry(revision.to_string())
            .and_modify(|e| e.0 += 1)
            .or_insert((1, sample));
    }
    out.into_iter()
        .map(|(r, (n, s))| {
            let s = if n == 1 {
                s
            } else {
                Sample::Error {
                    message: format!("the query returned {n} series where one was expected"),
                }
            };
            (r, s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> SharedQuery {
        share::shared(|r| format!(r#"sum(rate(a{{w="{r}-deployment"}}[1m]))"#)).expect("shared")
    }

    #[test]
    fn the_answer_is_split_by_revision_and_several_series_are_an_error() {
        let v = |x: f64| Sample::Value { value: x, at: 1 };
        let got = split(
            &query(),
            vec![
                (Some("r1-deployment".into()), v(1.0)),
                (Some("r2-deployment".into()), v(2.0)),
                (Some("r2-deployment".into()), v(3.0)),
                (Some("other".into()), v(4.0)),
                (None, v(5.0)),
            ],
        );
        assert_eq!(got.get("r1"), Some(&v(1.0)));
        assert!(
            matches!(got.get("r2"), Some(Sample::Error { message }) if message.contains("2 series"))
        );
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn a_rollout_takes_an_answer_younger_than_a_tenth_of_its_interval_and_the_tick() {
        let f = Fanout::new(Duration::from_secs(1));
        assert_eq!(f.max_age(Duration::from_secs(30)), 1000);
        assert_eq!(f.max_age(Duration::from_secs(1)), 100);
    }

    #[test]
    fn plans_are_cached_and_unshared_queries_say_why() {
        let f = Fanout::new(Duration::from_secs(1));
        let text = format!(r#"sum(rate(a{{r="{}"}}[1m]))"#, share::SENTINEL);
        let a = f.plan(&text).expect("shared");
        let b = f.plan(&text).expect("shared");
        assert!(Arc::ptr_eq(&a, &b));
        let vector = format!(
            r#"sum(rate(a{{r="{}"}}[1m])) or vector(0)"#,
            share::SENTINEL
        );
        assert_eq!(f.plan(&vector), Err(NotShared::Function("vector".into())));
    }
}
