//! Querying Prometheus for the machine: one instant query per (arm, metric, window), templates
//! filled with escaped values, credentials by reference, no data never read as 0.

use std::time::Duration;

use prometheus_http_query::Client;
use rollout_engine::{QueryKey, Sample};
use rollout_policy::model::{Arm, MetricKind, Policy};
use rollout_policy::template::Vars;

use crate::secret::{Secret, redact};

/// Where a credential comes from: re-read whenever the file changes (projected
/// service-account tokens rotate), checked before it is sent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    /// A bearer token in a file (`token_file`).
    TokenFile(String),
    /// A bearer token in an environment variable (`token_env`).
    TokenEnv(String),
    /// `user:password` in a file (`basic_auth_file`).
    BasicFile(String),
}

/// A file's identity for change detection: modification time and length.
type Stamp = Option<(std::time::SystemTime, u64)>;

#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    header: reqwest::header::HeaderValue,
    secrets: Vec<Secret>,
}

/// The credentials of one Prometheus: the `Authorization` header, built from the policy's
/// reference when first needed and again whenever the file behind it changes.
#[derive(Debug, Default)]
pub struct Credentials {
    source: Option<Source>,
    cached: std::sync::Mutex<Option<Cached>>,
}

fn one_line(text: &str, setting: &str, path: &str) -> Result<String, String> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    let t = t.strip_suffix('\r').unwrap_or(t).trim();
    if t.is_empty() {
        return Err(format!("{setting} `{path}` is empty"));
    }
    if t.contains('\n') || t.contains('\r') {
        return Err(format!("{setting} `{path}` has more than one line"));
    }
    if !t.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!(
            "{setting} `{path}` holds characters that cannot be sent in a header"
        ));
    }
    Ok(t.to_string())
}

impl Credentials {
    /// The policy's credential reference (none, a token file or variable, a basic-auth file).
    pub fn from_policy(p: &Policy) -> Credentials {
        let a = &p.prometheus.auth;
        let source = if let Some(f) = &a.token_file {
            Some(Source::TokenFile(f.clone()))
        } else if let Some(v) = &a.token_env {
            Some(Source::TokenEnv(v.clone()))
        } else {
            a.basic_auth_file
                .as_ref()
                .map(|f| Source::BasicFile(f.clone()))
        };
        Credentials {
            source,
            cached: std::sync::Mutex::new(None),
        }
    }

    fn stamp(path: &str) -> Stamp {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    }

    /// The header to send now (`None`: no credentials), re-read if the file changed.
    pub fn header(&self) -> Result<Option<reqwest::header::HeaderValue>, String> {
        let Some(source) = &self.source else {
            return Ok(None);
        };
        let stamp = match source {
            Source::TokenFile(f) | Source::BasicFile(f) => Self::stamp(f),
            Source::TokenEnv(_) => None,
        };
        let mut guard = self
            .cached
            .lock()
            .map_err(|_| "credentials lock poisoned".to_string())?;
        if let Some(c) = guard.as_ref()
            && (c.stamp == stamp && (stamp.is_some() || matches!(source, Source::TokenEnv(_))))
        {
            return Ok(Some(c.header.clone()));
        }
        let read = |path: &str, what: &str| {
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} `{path}`: {e}"))
        };
        let (header, secrets) = match source {
            Source::TokenFile(f) => {
                let t = one_line(&read(f, "token_file")?, "token_file", f)?;
                (format!("Bearer {t}"), vec![Secret::new(t)])
            }
            Source::TokenEnv(v) => {
                let raw = std::env::var(v)
                    .map_err(|_| format!("environment variable `{v}` (token_env) is not set"))?;
                let t = one_line(&raw, "token_env", v)?;
                (format!("Bearer {t}"), vec![Secret::new(t)])
            }
            Source::BasicFile(f) => {
                let line = one_line(&read(f, "basic_auth_file")?, "basic_auth_file", f)?;
                let (user, pass) = line
                    .split_once(':')
                    .ok_or_else(|| format!("basic_auth_file `{f}` must hold `user:password`"))?;
                (
                    format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
                    vec![Secret::new(pass), Secret::new(line.clone())],
                )
            }
        };
        let mut h = reqwest::header::HeaderValue::from_str(&header)
            .map_err(|_| "the credential cannot be sent in a header".to_string())?;
        h.set_sensitive(true);
        if guard.is_some() {
            tracing::info!("Prometheus credentials changed; using the new ones");
        }
        *guard = Some(Cached {
            stamp,
            header: h.clone(),
            secrets,
        });
        Ok(Some(h))
    }

    /// The secrets in use, for redacting error messages.
    fn secrets(&self) -> Vec<Secret> {
        self.cached
            .lock()
            .ok()
            .and_then(|g| g.as_ref().map(|c| c.secrets.clone()))
            .unwrap_or_default()
    }
}

/// TLS settings of the policy (`ca_file`, `insecure`).
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// Extra CA certificate (PEM).
    pub ca_pem: Option<Vec<u8>>,
    /// Skip TLS verification.
    pub insecure: bool,
}

impl Tls {
    /// From the policy.
    pub fn from_policy(p: &Policy) -> Result<Tls, String> {
        let a = &p.prometheus.auth;
        Ok(Tls {
            ca_pem: match &a.ca_file {
                Some(f) => {
                    Some(std::fs::read(f).map_err(|e| format!("cannot read ca_file `{f}`: {e}"))?)
                }
                None => None,
            },
            insecure: a.insecure,
        })
    }
}

/// A Prometheus client for one policy.
#[derive(Clone)]
pub struct Prom {
    client: Client,
    credentials: std::sync::Arc<Credentials>,
    timeout: Duration,
    /// The base URL.
    pub url: String,
    /// What tells two Prometheus clients apart ([`identity`] for a policy's; URL, credential
    /// source and `insecure` for one made with [`Prom::new`]). No secret.
    pub(crate) identity: String,
}

impl std::fmt::Debug for Prom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prom({})", self.url)
    }
}

impl Prom {
    /// A client for `url`.
    pub fn new(
        url: &str,
        credentials: Credentials,
        tls: &Tls,
        timeout: Duration,
    ) -> Result<Prom, String> {
        let mut b = reqwest::Client::builder().timeout(timeout + Duration::from_secs(2));
        if let Some(pem) = &tls.ca_pem {
            let cert =
                reqwest::Certificate::from_pem(pem).map_err(|e| format!("invalid ca_file: {e}"))?;
            b = b.add_root_certificate(cert);
        }
        if tls.insecure {
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
        // A credential that cannot be read or sent is an error now, naming the setting.
        credentials.header()?;
        let identity = format!("{url}|{:?}|insecure={}", credentials.source, tls.insecure);
        Ok(Prom {
            client,
            credentials: std::sync::Arc::new(credentials),
            timeout,
            url: url.to_string(),
            identity,
        })
    }

    /// A client for a policy, with an optional URL override.
    pub fn for_policy(p: &Policy, url: Option<&str>) -> Result<Prom, String> {
        let url = url.unwrap_or(&p.prometheus.url);
        let mut prom = Prom::new(
            url,
            Credentials::from_policy(p),
            &Tls::from_policy(p)?,
            p.prometheus.timeout,
        )?;
        prom.identity = identity(url, &p.prometheus.auth);
        Ok(prom)
    }

    fn redact(&self, message: &str) -> String {
        let secrets = self.credentials.secrets();
        redact(message, &secrets.iter().collect::<Vec<_>>())
    }

    /// Runs one instant query evaluated at `now_ms` (this runner's clock, so Prometheus's own
    /// clock does not matter): a well-behaved Prometheus answers for exactly that time, and an
    /// answer for an older time is judged by its own timestamp (stale). Empty, NaN or infinite
    /// → no data; several series → error.
    pub async fn query(&self, promql: &str, now_ms: u64) -> Sample {
        self.instant(promql, now_ms, Some(now_ms)).await
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
        if let Some(h) = self.credentials.header()? {
            q = q.header(reqwest::header::AUTHORIZATION, h);
        }
        let res = q
            .post()
            .await
            .map_err(|e| format!("range query failed: {}", self.redact(&e.to_string())))?;
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

    /// An instant query at `now_ms` that may return many series: each one's value of `label`
    /// (none when the series lacks it) and its sample, judged as [`Prom::query`] judges one.
    pub async fn query_series(
        &self,
        promql: &str,
        label: &str,
        now_ms: u64,
    ) -> Result<Vec<(Option<String>, Sample)>, String> {
        let q = self.request(promql, Some(now_ms))?;
        let res = q.post().await.map_err(|e| self.redact(&e.to_string()))?;
        let Some(v) = res.data().as_vector() else {
            return Err("the query did not return a vector".into());
        };
        Ok(v.iter()
            .map(|one| {
                (
                    one.metric().get(label).cloned(),
                    finite(one.sample().value(), one.sample().timestamp(), now_ms),
                )
            })
            .collect())
    }

    fn request(
        &self,
        promql: &str,
        at_ms: Option<u64>,
    ) -> Result<prometheus_http_query::InstantQueryBuilder, String> {
        let mut q = self
            .client
            .query(promql)
            .timeout(self.timeout.as_millis() as i64);
        if let Some(at) = at_ms {
            q = q.at((at / 1000) as i64);
        }
        if let Some(h) = self.credentials.header()? {
            q = q.header(reqwest::header::AUTHORIZATION, h);
        }
        Ok(q)
    }

    async fn instant(&self, promql: &str, now_ms: u64, at_ms: Option<u64>) -> Sample {
        let q = match self.request(promql, at_ms) {
            Ok(q) => q,
            Err(message) => return Sample::Error { message },
        };
        match q.post().await {
            Err(e) => Sample::Error {
                message: self.redact(&e.to_string()),
            },
            Ok(res) => {
                let data = res.data();
                if let Some(v) = data.as_vector() {
                    match v.as_slice() {
                        [] => Sample::NoData,
                        [one] => finite(one.sample().value(), one.sample().timestamp(), now_ms),
                        many => Sample::Error {
                            message: format!(
                                "the query returned {} series where one was expected",
                                many.len()
                            ),
                        },
                    }
                } else if let Some(s) = data.as_scalar() {
                    finite(s.value(), s.timestamp(), now_ms)
                } else {
                    Sample::Error {
                        message: "the query returned neither a vector nor a scalar".into(),
                    }
                }
            }
        }
    }
}

/// A sample with the time Prometheus gives it (an instant query's evaluation time for
/// aggregates; an answer from an older time, as a lagging or replaying Prometheus gives, is then
/// judged stale by the engine's `stale_after`). Not finite: no data.
fn finite(v: f64, at_s: f64, now_ms: u64) -> Sample {
    if !v.is_finite() {
        return Sample::NoData;
    }
    let at = if at_s.is_finite() && at_s > 0.0 {
        ((at_s * 1000.0) as u64).min(now_ms)
    } else {
        now_ms
    };
    Sample::Value { value: v, at }
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

/// What tells the Prometheus of two policies apart: the URL and every credential and TLS
/// reference (paths and names, never their contents). One client serves each, and queries are
/// shared only among policies with the same one.
pub(crate) fn identity(url: &str, auth: &rollout_policy::model::Auth) -> String {
    format!("{url}|{auth:?}")
}

/// Renders the PromQL of a query key for the given revisions.
pub fn render(
    policy: &Policy,
    key: &QueryKey,
    mode: rollout_policy::template::Mode,
    canary: &str,
    stable: &str,
) -> Option<String> {
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
        mode,
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
    fn a_credential_file_is_one_line_of_header_text_or_an_error_naming_the_setting() {
        assert_eq!(one_line("tok\n", "token_file", "/t"), Ok("tok".into()));
        assert_eq!(one_line("tok\r\n", "token_file", "/t"), Ok("tok".into()));
        let two = one_line("tok\nsecret-2\n", "token_file", "/t").expect_err("refused");
        assert!(
            two.contains("token_file `/t`") && two.contains("more than one line"),
            "{two}"
        );
        assert!(
            !two.contains("secret-2"),
            "the content is not echoed: {two}"
        );
        let empty = one_line("\n", "basic_auth_file", "/b").expect_err("refused");
        assert!(empty.contains("basic_auth_file `/b` is empty"), "{empty}");
        let bad = one_line("t\u{7f}k", "token_file", "/t").expect_err("refused");
        assert!(bad.contains("cannot be sent in a header"), "{bad}");
        let nul = one_line("t\0k", "token_file", "/t").expect_err("refused");
        assert!(nul.contains("cannot be sent in a header"), "{nul}");
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"fooba"), "Zm9vYmE=");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
