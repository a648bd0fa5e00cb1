//! The admin endpoints under `/__admin/`: request statistics, fault
//! injection and account key regeneration.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::{Rng, SeedableRng};

use crate::faults::{FaultConfig, Faults};
use crate::http::{empty, full, parse_query, percent_decode, RespBody};
use crate::shared::Shared;

fn json_response(status: u16, v: &serde_json::Value) -> Response<RespBody> {
    let body = serde_json::to_vec(v).unwrap();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(full(body))
        .unwrap()
}

pub(crate) async fn admin(shared: Arc<Shared>, req: Request<Incoming>) -> Response<RespBody> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let bad = |msg: &str| json_response(400, &serde_json::json!({"error": msg}));
    match (method.as_str(), path.as_str()) {
        ("GET", "/__admin/stats") => {
            let reqs = shared.stats.requests.lock().unwrap().clone();
            json_response(
                200,
                &serde_json::json!({
                    "requests": reqs,
                    "total_requests": shared.stats.total.load(Ordering::Relaxed),
                    "bytes_in": shared.stats.bytes_in.load(Ordering::Relaxed),
                    "bytes_out": shared.stats.bytes_out.load(Ordering::Relaxed),
                    "faults_injected": shared.stats.faults.load(Ordering::Relaxed),
                }),
            )
        }
        ("DELETE", "/__admin/stats") => {
            shared.stats.requests.lock().unwrap().clear();
            shared.stats.total.store(0, Ordering::Relaxed);
            shared.stats.bytes_in.store(0, Ordering::Relaxed);
            shared.stats.bytes_out.store(0, Ordering::Relaxed);
            shared.stats.faults.store(0, Ordering::Relaxed);
            Response::builder().status(204).body(empty()).unwrap()
        }
        ("POST", "/__admin/faults") => {
            let cfg: FaultConfig = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => return bad(&e.to_string()),
            };
            if !(0.0..=1.0).contains(&cfg.rate) {
                return bad("rate must be within 0..=1");
            }
            for k in &cfg.kinds {
                if !["500", "503", "408", "reset", "slow", "truncate"].contains(&k.as_str()) {
                    return bad(&format!("unknown fault kind {k}"));
                }
            }
            let echo = serde_json::to_value(&cfg).unwrap();
            *shared.faults.lock().unwrap() = Some(Faults {
                rng: rand::rngs::StdRng::seed_from_u64(cfg.seed),
                cfg,
            });
            json_response(200, &echo)
        }
        ("DELETE", "/__admin/faults") => {
            *shared.faults.lock().unwrap() = None;
            Response::builder().status(204).body(empty()).unwrap()
        }
        ("POST", p) if p.starts_with("/__admin/accounts/") && p.ends_with("/regenerate-key") => {
            let name = percent_decode(
                p.trim_start_matches("/__admin/accounts/")
                    .trim_end_matches("/regenerate-key"),
            );
            let which: usize = match query
                .iter()
                .find(|(k, _)| k == "key")
                .map(|(_, v)| v.as_str())
            {
                Some("1") | None => 1,
                Some("2") => 2,
                Some(_) => return bad("key must be 1 or 2"),
            };
            let mut raw = [0u8; 64];
            rand::thread_rng().fill(&mut raw[..]);
            let mut st = shared.state.lock().unwrap();
            let Some(acct) = st.accounts.get_mut(&name) else {
                return json_response(404, &serde_json::json!({"error": "no such account"}));
            };
            acct.keys[which - 1] = raw.to_vec();
            json_response(
                200,
                &serde_json::json!({"account": name, "key": B64.encode(raw), "which": which}),
            )
        }
        _ => json_response(404, &serde_json::json!({"error": "unknown admin endpoint"})),
    }
}
