//! Evidence: samples Prometheus stamps an hour ago are stale, frozen counters and a canary
//! with no traffic are never evidence for promotion, a count rule without a sample guard is
//! refused, and a malformed credential file is a clear error naming the setting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::world::*;

/// What the fake Prometheus answers.
#[derive(Clone, Copy)]
enum Answer {
    /// Plausible values, stamped an hour before the time asked.
    HourOld,
    /// Fresh samples of counters that stopped: every rate is 0.
    Frozen,
}

/// A small Prometheus HTTP API (`/api/v1/query` only) answering every instant query with one
/// series: where a real Prometheus cannot produce the answer (samples an hour old for a query
/// made now). Returns its URL; counts the queries.
async fn fake_prometheus(answer: Answer, queries: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let queries = queries.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = client.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(i) = text.find("\r\n\r\n") {
                        let len: usize = text[..i]
                            .lines()
                            .find_map(|l| {
                                l.to_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break;
                        }
                    }
                }
                queries.fetch_add(1, Ordering::SeqCst);
                let request = String::from_utf8_lossy(&buf).to_lowercase();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                let (ts, value) = match answer {
                    // An error ratio of 0.1% and 30 requests a second, an hour old.
                    Answer::HourOld => (
                        now - 3600.0,
                        if request.contains("5..") || request.contains("error") {
                            "0.001"
                        } else {
                            "30"
                        },
                    ),
                    Answer::Frozen => (now, "0"),
                };
                let body = json!({"status": "success", "data": {"resultType": "vector",
                    "result": [{"metric": {}, "value": [ts, value]}]}})
                .to_string();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = client.write_all(head.as_bytes()).await;
                let _ = client.write_all(body.as_bytes()).await;
                let _ = client.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn failed_with(ds: &[serde_json::Value], kind: &str) -> usize {
    ds.iter()
        .filter(|d| {
            d["failures"]
                .as_array()
                .is_some_and(|f| f.iter().any(|k| k == kind))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn samples_an_hour_old_are_stale_data_and_never_promote() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let queries = Arc::new(AtomicU64::new(0));
    let prom = fake_prometheus(Answer::HourOld, queries.clone()).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut r = w.run_via(&prom, &p, &[], &[]);
    let code = r.exit(60).await;
    let ds = r.decisions();
    assert!(queries.load(Ordering::SeqCst) > 0, "the fake was asked");
    assert!(
        ds.iter().all(|d| d["traffic"].as_i64().unwrap_or(0) <= 10),
        "never above 10%"
    );
    assert_ne!(code, 0, "not promoted; {}", r.stderr());
    // Refused at preflight (the stable revision's series is an hour old) or rolled back by
    // `on stale_data`: either way the hour-old samples were judged stale.
    let err = r.stderr();
    assert!(
        failed_with(&ds, "stale_data") > 0 || err.contains("stale") || err.contains("old"),
        "stale samples seen as stale: code {code}\n{err}"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frozen_counters_are_never_evidence_for_promotion() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let queries = Arc::new(AtomicU64::new(0));
    let prom = fake_prometheus(Answer::Frozen, queries.clone()).await;
    let on = ON.replace("inconclusive hold 20s", "inconclusive hold 5s");
    let p = w.policy_file(&policy("", STEPS, "", &on));
    let mut r = w.run_via(&prom, &p, &[], &[]);
    let code = r.exit(60).await;
    let ds = r.decisions();
    assert!(queries.load(Ordering::SeqCst) > 0, "the fake was asked");
    assert_ne!(code, 0, "not promoted; {}", r.stderr());
    assert!(
        ds.iter().all(|d| d["traffic"].as_i64().unwrap_or(0) <= 10),
        "never above 10%"
    );
    assert!(
        ds.iter().all(|d| d["rules"]
            .as_array()
            .is_none_or(|rs| rs.iter().all(|x| x["verdict"] != "pass"))),
        "no evaluation passed on zero requests"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_count_rule_without_a_sample_guard_is_refused_before_any_write() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let unguarded = "  rule FewErrors {\n    when canary.errors > 5\n    action rollback\n  }\n";
    let p = w.policy_file(&policy(unguarded, STEPS, "", ON));
    let writes = w.isvc_writes();
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(30).await, 1, "{}", r.stderr());
    assert!(r.stderr().contains("R1058"), "{}", r.stderr());
    assert_eq!(w.isvc_writes(), writes, "nothing written");
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_file_with_two_lines_is_an_error_naming_the_setting() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let file = w.dir.path().join("token");
    std::fs::write(&file, "token-one\nsecond-line\n").expect("token");
    let text = policy("", STEPS, "", ON).replace(
        "timeout = 2s",
        &format!("timeout = 2s\n    token_file = \"{}\"", file.display()),
    );
    let p = w.policy_file(&text);
    let writes = w.isvc_writes();
    let mut r = w.run(&p, &[], &[]);
    let code = r.exit(60).await;
    let err = r.stderr();
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("token_file") && err.contains("more than one line"),
        "{err}"
    );
    assert!(
        !err.contains("second-line"),
        "the secret is not echoed: {err}"
    );
    assert!(
        r.decisions()
            .iter()
            .all(|d| d["traffic"].as_i64().unwrap_or(0) <= 10),
        "never promoted"
    );
    eprintln!(
        "E2E multi-line token file: exit {code}, {} writes",
        w.isvc_writes() - writes
    );
    w.sandbox.shutdown().await;
}
