//! Fail-safe paths: Prometheus down, API faults, refused targets, unready canaries, two
//! runners, a dry run, a preflight that finds no metrics, watch errors, rotating credentials,
//! a deleted InferenceService.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_stopped_mid_rollout_never_promotes() {
    let mut w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut r = w.run(&p, &[], &[]);
    r.until(40, "the 25% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 25
    })
    .await;
    if let Some(prom) = w.sandbox.prometheus.take() {
        prom.stop().await;
    }
    assert_eq!(
        r.exit(60).await,
        3,
        "rolled back by `on query_error hold 5s then rollback`"
    );
    let ds = r.decisions();
    assert!(ds.iter().any(|d| {
        d["failures"]
            .as_array()
            .is_some_and(|f| f.iter().any(|k| k == "query_error"))
    }));
    assert!(
        ds.iter().all(|d| d["traffic"].as_i64().unwrap_or(0) <= 25),
        "never promoted"
    );
    assert_eq!(spec_percent(&w.obj().await), Some(0));
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_409s_and_500s_are_retried_or_re_decided() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    w.sandbox.set_faults(rollout_sandbox::Faults {
        fail_next: 3,
        fail_code: 409,
        fail_method: Some("PATCH".into()),
        ..Default::default()
    });
    let traffic = w.record_traffic();
    let mut r = w.run(&p, &[], &[("RUST_LOG", "info")]);
    r.until(40, "the 25% step", |d| d["traffic"] == 25).await;
    w.sandbox.set_faults(rollout_sandbox::Faults {
        fail_next: 4,
        fail_code: 500,
        ..Default::default()
    });
    assert_eq!(
        r.exit(120).await,
        0,
        "promoted despite the faults; stderr:\n{}",
        r.stderr()
    );
    assert!(r.stderr().contains("409"), "the conflicts were seen");
    assert_eq!(traffic.values(), vec![10, 25, 50, 100]);
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_targets_change_nothing_and_an_unready_canary_is_never_judged() {
    let w = world(60.0).await;
    // Standard mode without a `spec.canary[]` entry: nothing to roll out, exit 5, nothing
    // written.
    w.apply(isvc_obj(
        "gs://m/1",
        None,
        json!({"serving.kserve.io/deploymentMode": "Standard"}),
    ))
    .await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let writes = w.isvc_writes();
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(30).await, 5);
    assert!(
        r.stderr().contains("no canary") && r.stderr().contains("a `spec.canary[]` entry"),
        "{}",
        r.stderr()
    );
    assert_eq!(w.isvc_writes(), writes);
    w.isvc
        .api
        .delete("sklearn-iris", &Default::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A component the InferenceService lacks: refused, and no `spec.transformer` is created.
    w.apply(isvc_obj("gs://m/1", None, json!({}))).await;
    w.wait_settled(100).await;
    w.apply(isvc_obj("gs://m/2", Some(10), json!({}))).await;
    w.wait_settled(10).await;
    let t = w.policy_file(&policy("", STEPS, "", ON).replace(
        "namespace = \"kserve-test\"\n  }",
        "namespace = \"kserve-test\"\n    component = transformer\n  }",
    ));
    let mut r = w.run(&t, &[], &[]);
    assert_eq!(r.exit(30).await, 5);
    assert!(
        r.stderr().contains("no `spec.transformer`"),
        "{}",
        r.stderr()
    );
    assert!(w.obj().await.data["spec"].get("transformer").is_none());
    // A canary that never becomes ready: never judged, rolled back at the settle timeout.
    w.apply(isvc_obj(
        "gs://m/3",
        Some(10),
        json!({"sandbox.rolloutctl.io/fail-readiness": "true"}),
    ))
    .await;
    let p = w.policy_file(
        &policy("", STEPS, "", ON).replace("settle_timeout = 20s", "settle_timeout = 5s"),
    );
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(
        r.exit(60).await,
        3,
        "rolled back at the timeout; {}",
        r.stderr()
    );
    assert!(
        r.decisions().iter().all(|d| d["evaluated"] == false),
        "an unready canary was judged"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_on_one_rollout_exactly_one_acts_and_a_dry_run_writes_nothing() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    // A dry run first: no ModelRollout, no Lease, no Event, no write.
    let before = w.obj().await;
    let dry = w.policy_file(
        &policy("", STEPS, "", ON).replace("settle_timeout = 20s", "settle_timeout = 4s"),
    );
    let mut r = w.run(&dry, &["--dry-run"], &[]);
    assert_ne!(r.exit(60).await, 0, "a dry run cannot promote");
    assert!(
        r.decisions().iter().any(|d| d["evaluated"] == true),
        "decisions were made and logged"
    );
    assert_eq!(
        before.metadata.resource_version,
        w.obj().await.metadata.resource_version,
        "the InferenceService was not written"
    );
    let mros: Api<rollout_api::ModelRollout> = Api::namespaced(w.client.clone(), "kserve-test");
    assert!(
        mros.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty(),
        "no ModelRollout created"
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(w.client.clone(), "kserve-test");
    assert!(
        leases
            .list(&Default::default())
            .await
            .expect("leases")
            .items
            .is_empty(),
        "no Lease taken"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(w.client.clone(), "kserve-test");
    assert!(
        events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .is_empty(),
        "no Events"
    );
    // Two runners at once: one promotes, the other is refused and decides nothing.
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut a = w.run(&p, &[], &[]);
    let mut b = w.run(&p, &[], &[]);
    let (ca, cb) = (a.exit(120).await, b.exit(120).await);
    let mut codes = [ca, cb];
    codes.sort_unstable();
    assert_eq!(codes, [0, 5], "one promoted, the other refused");
    let refused = if ca == 5 { &a } else { &b };
    assert!(refused.stderr().contains("another rolloutctl"));
    assert!(
        refused.decisions().is_empty(),
        "the refused runner decided nothing"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preflight_refuses_a_metric_prometheus_does_not_have_before_any_traffic_moves() {
    let w = world(60.0).await;
    w.apply(isvc_obj("gs://m/1", None, json!({}))).await;
    w.wait_settled(100).await;
    // A canary at 0%, as a user leaves it for rolloutctl: preflight runs before step 1.
    w.apply(isvc_obj("gs://m/2", Some(0), json!({}))).await;
    w.wait_settled(0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let wrong = policy("", STEPS, "", ON).replace(
        "  use knative\n",
        "  use knative\n\n  metric queue_depth {\n    query = \"sum(kn_serving_queue_depth{kn_revision_name=\\\"${revision}\\\"})\"\n    unit = count\n  }\n\n  rule Queue {\n    when canary.queue_depth > 100\n    require canary.requests >= 5\n    action pause\n  }\n",
    );
    let p = w.policy_file(&wrong);
    let writes = w.isvc_writes();
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(30).await, 5, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("preflight refused")
            && err.contains("queue_depth")
            && err.contains("kn_serving_queue_depth"),
        "{err}"
    );
    assert!(err.contains(V1), "names the stable revision: {err}");
    assert_eq!(w.isvc_writes(), writes, "no traffic moved");
    assert_eq!(spec_percent(&w.obj().await), Some(0));
    let st = w.rollout().await.status.expect("status");
    assert_eq!(
        st.condition("Preflight")
            .map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("False", "MetricsMissing"))
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_errors_back_off_instead_of_spinning() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    // Every watch request is refused, as for a Role without `watch`.
    w.sandbox.set_faults(rollout_sandbox::Faults {
        fail_next: u32::MAX,
        fail_code: 403,
        fail_watch: true,
        ..Default::default()
    });
    let r = w.run(&p, &[], &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = rollout_sandbox::control::state(w.sandbox.app())["injected_failures"]
        .as_u64()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let end = rollout_sandbox::control::state(w.sandbox.app())["injected_failures"]
        .as_u64()
        .unwrap_or(0);
    let rate = (end - start) as f64 / 10.0;
    eprintln!("E2E watch attempts per second under persistent 403: {rate:.2}");
    assert!(
        rate < 2.0,
        "{rate:.1} refused watches a second: the runner spins"
    );
    assert!(end > 0, "the runner did try to watch");
    drop(r);
    w.sandbox.shutdown().await;
}

/// A loopback proxy in front of Prometheus that requires `Authorization: Bearer <token>` with
/// the token it holds now, one request per connection (it closes each after the answer).
async fn auth_proxy(
    upstream: String,
    token: Arc<std::sync::Mutex<String>>,
    refused: Arc<AtomicU64>,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let (upstream, token, refused) = (upstream.clone(), token.clone(), refused.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = client.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let want =
                    format!("authorization: bearer {}", token.lock().expect("lock")).to_lowercase();
                if !head.to_lowercase().lines().any(|l| l.trim() == want) {
                    refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                    return;
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let Ok(n) = client.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let request = String::from_utf8_lossy(&buf).replacen(
                    "\r\n\r\n",
                    "\r\nConnection: close\r\n\r\n",
                    1,
                );
                let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = up.write_all(request.as_bytes()).await;
                let mut answer = Vec::new();
                let _ = up.read_to_end(&mut answer).await;
                let _ = client.write_all(&answer).await;
                let _ = client.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotated_token_file_is_read_again() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let token = Arc::new(std::sync::Mutex::new("token-one".to_string()));
    let refused = Arc::new(AtomicU64::new(0));
    let proxy = auth_proxy(
        w.prom.trim_start_matches("http://").to_string(),
        token.clone(),
        refused.clone(),
    )
    .await;
    let file = w.dir.path().join("token");
    std::fs::write(&file, "token-one\n").expect("token");
    let text = policy("", STEPS, "", ON).replace(
        "timeout = 2s",
        &format!("timeout = 2s\n    token_file = \"{}\"", file.display()),
    );
    let p = w.policy_file(&text);
    let mut r = w.run_via(&proxy, &p, &[], &[]);
    r.until(40, "the 25% step", |d| d["traffic"] == 25).await;
    // Rotate: the proxy accepts only the new token from now on, the file holds it.
    let rotated_at = Instant::now();
    *token.lock().expect("lock") = "token-two".into();
    std::fs::write(&file, "token-two\n").expect("rotate");
    assert_eq!(
        r.exit(90).await,
        0,
        "promoted across the rotation; {}",
        r.stderr()
    );
    let errors_after: usize = r
        .decisions()
        .iter()
        .filter(|d| {
            d["failures"]
                .as_array()
                .is_some_and(|f| f.iter().any(|k| k == "query_error"))
        })
        .count();
    eprintln!(
        "E2E token rotation: {} requests refused by the proxy, {errors_after} evaluations with query errors, rotated {:.1}s before the end",
        refused.load(Ordering::SeqCst),
        rotated_at.elapsed().as_secs_f64()
    );
    assert!(errors_after <= 1, "the new token was not picked up");
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_inferenceservice_ends_the_run_with_a_clear_message() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "the 10% hold", |d| d["to"] == "holding").await;
    w.isvc
        .api
        .delete("sklearn-iris", &Default::default())
        .await
        .expect("delete");
    assert_eq!(r.exit(30).await, 7, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("deleted") || err.contains("does not exist") || err.contains("not found"),
        "{err}"
    );
    w.sandbox.shutdown().await;
}
