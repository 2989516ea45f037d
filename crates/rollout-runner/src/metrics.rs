//! Querying Prometheus for the machine: one instant query per (arm, metric, window), templates
//! filled with escaped values, credentials by reference, no data never read as 0.

use std::time::Duration;

use prometheus_http_query::Client;
use rollout_engine::{QueryKey, Sample};
use rollout_policy::model::{Arm, MetricKind, Policy};
use rollout_policy::template::Vars;

use crate::secret::{Secret, redact};

/// How to reach Prometheus.
#[derive(Clone, Debug, Default)]
pub struct PromAuth {
    /// Bearer token (from `token_file` or `token_env`).
    pub token: Option<Secret>,
    /// Basic auth user and password (from `basic_auth_file`, `user:password`).
    pub basic: Option<(String, Secret)>,
    /// Extra CA certificate (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Skip TLS verification.
    pub insecure: bool,
}

impl PromAuth {
    /// Resolves the policy's credential references (files and environment variables).
    pub fn from_policy(p: &Policy) -> Result<PromAuth, String> {
        let a = &p.prometheus.auth;
        let read = |path: &str, what: &str| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} `{path}`: {e}"))
        };
        let mut out = PromAuth {
            insecure: a.insecure,
            ..PromAuth::default()
        };
        if let Some(f) = &a.token_file {
            out.token = Some(Secret::new(read(f, "token_file")?.trim()));
        }
        if let Some(v) = &a.token_env {
            let t = std::env::var(v)
                .map_err(|_| format!("environment variable `{v}` (token_env) is not set"))?;
            out.token = Some(Secret::new(t.trim()));
        }
        if let Some(f) = &a.basic_auth_file {
            let text = read(f, "basic_auth_file")?;
            let (user, pass) = text
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("`{f}` must hold `user:password`"))?;
            out.basic = Some((user.to_string(), Secret::new(pass)));
        }
        if let Some(f) = &a.ca_file {
            out.ca_pem =
                Some(std::fs::read(f).map_err(|e| format!("cannot read ca_file `{f}`: {e}"))?);
        }
        Ok(out)
    }
}

/// A Prometheus client for one policy.
#[derive(Clone)]
pub struct Prom {
    client: Client,
    auth: PromAuth,
    /// The `Authorization` header, built once (marked sensitive), for instant and range queries.
    authorization: Option<reqwest::header::HeaderValue>,
    timeout: Duration,
    /// The base URL.
    pub url: String,
}

impl std::fmt::Debug for Prom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prom({})", self.url)
    }
}

impl Prom {
    /// A client for `url`.
    pub fn new(url: &str, auth: PromAuth, timeout: Duration) -> Result<Prom, String> {
        let mut b = reqwest::Client::builder().timeout(timeout + Duration::from_secs(2));
        if let Some(pem) = &auth.ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| format!("invalid ca_file: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        if auth.insecure {
            tracing::warn!(
                "TLS certificate verification of Prometheus is disabled (`insecure = true`)"
            );
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let client =
            Client::from(http, url).map_err(|e| format!("invalid Prometheus URL `{url}`: {e}"))?;
        let authorization = match (&auth.token, &auth.basic) {
            (Some(t), _) => Some(sensitive(&format!("Bearer {}", t.expose()))),
            (None, Some((user, pass))) => {
                let raw = format!("{user}:{}", pass.expose());
                Some(sensitive(&format!("Basic {}", base64(raw.as_bytes()))))
            }
            (None, None) => None,
        };
        Ok(Prom {
            client,
            auth,
            authorization,
            timeout,
            url: url.to_string(),
        })
    }

    fn secrets(&self) -> Vec<&Secret> {
        let mut v = Vec::new();
        if let Some(t) = &self.auth.token {
            v.push(t);
        }
        if let Some((_, p)) = &self.auth.basic {
            v.push(p);
        }
        v
    }

    /// Runs one instant query. Empty, NaN or infinite → no data; several series → error.
    pub async fn query(&self, promql: &str, now_ms: u64) -> Sample {
        self.instant(promql, now_ms, None).await
    }

    /// An instant query evaluated at a past time (for replay).
    pub async fn query_at(&self, promql: &str, at_ms: u64) -> Sample {
        self.instant(promql, at_ms, Some(at_ms)).await
    }

    /// A range query: `(unix seconds, value)` of the one series it returns (empty: none).
    pub async fn range(
        &self,
        promql: &str,
        from_ms: u64,
        to_ms: u64,
        step_s: f64,
    ) -> Result<Vec<(f64, f64)>, String> {
        let mut q = self
            .client
            .query_range(
                promql,
                (from_ms / 1000) as i64,
                to_ms.div_ceil(1000) as i64,
                step_s,
            )
            .timeout(self.timeout.as_millis() as i64);
        if let Some(h) = &self.authorization {
            q = q.header(reqwest::header::AUTHORIZATION, h.clone());
        }
        let res = q.post().await.map_err(|e| {
            format!(
                "range query failed: {}",
                redact(&e.to_string(), &self.secrets())
            )
        })?;
        let Some(m) = res.data().as_matrix() else {
            return Err("the range query did not return a matrix".into());
        };
        match m.as_slice() {
            [] => Ok(Vec::new()),
            [one] => Ok(one
                .samples()
                .iter()
                .map(|s| (s.timestamp(), s.value()))
                .collect()),
            many => Err(format!(
                "the range query returned {} series where one was expected",
                many.len()
            )),
        }
    }

    async fn instant(&self, promql: &str, now_ms: u64, at_ms: Option<u64>) -> Sample {
        let mut q = self
            .client
            .query(promql)
            .timeout(self.timeout.as_millis() as i64);
        if let Some(at) = at_ms {
            q = q.at((at / 1000) as i64);
        }
        if let Some(h) = &self.authorization {
            q = q.header(reqwest::header::AUTHORIZATION, h.clone());
        }
        match q.post().await {
            Err(e) => Sample::Error {
                message: redact(&e.to_string(), &self.secrets()),
            },
            Ok(res) => {
                let data = res.data();
                if let Some(v) = data.as_vector() {
                    match v.as_slice() {
                        [] => Sample::NoData,
                        [one] => finite(one.sample().value(), now_ms),
                        many => Sample::Error {
                            message: format!(
                                "the query returned {} series where one was expected",
                                many.len()
                            ),
                        },
                    }
                } else if let Some(s) = data.as_scalar() {
                    finite(s.value(), now_ms)
                } else {
                    Sample::Error {
                        message: "the query returned neither a vector nor a scalar".into(),
                    }
                }
            }
        }
    }
}

fn sensitive(v: &str) -> reqwest::header::HeaderValue {
    let mut h = reqwest::header::HeaderValue::from_str(v)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    h.set_sensitive(true);
    h
}

fn finite(v: f64, now_ms: u64) -> Sample {
    if v.is_finite() {
        Sample::Value {
            value: v,
            at: now_ms,
        }
    } else {
        Sample::NoData
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Renders the PromQL of a query key for the given revisions.
pub fn render(policy: &Policy, key: &QueryKey, canary: &str, stable: &str) -> Option<String> {
    let m = policy.metrics.get(key.metric)?;
    let MetricKind::Query(t) = &m.kind else {
        return None;
    };
    Some(t.render(&Vars {
        revision: if key.arm == Arm::Canary {
            canary
        } else {
            stable
        },
        namespace: &policy.target.namespace,
        name: &policy.target.name,
        component: policy.target.component.as_str(),
        window: Duration::from_millis(key.window_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
