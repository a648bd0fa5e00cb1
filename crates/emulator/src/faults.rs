//! Seeded fault injection (`POST /__admin/faults`): which request fails and
//! how, and what each kind of fault does to the request or its response.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::http::{content_length, RespBody};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultConfig {
    pub rate: f64,
    pub kinds: Vec<String>,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operations: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_ms: Option<u64>,
}

pub struct Faults {
    pub cfg: FaultConfig,
    pub rng: rand::rngs::StdRng,
}

impl Faults {
    /// Draw whether the request for `op` fails, and how (None: it does not,
    /// or the configuration names no kind this emulator knows).
    pub fn decide(&mut self, op: &str) -> Option<FaultKind> {
        if let Some(ops) = &self.cfg.operations {
            if !ops.iter().any(|o| o == op) {
                return None;
            }
        }
        if self.cfg.kinds.is_empty() || self.rng.gen::<f64>() >= self.cfg.rate {
            return None;
        }
        let k = self.rng.gen_range(0..self.cfg.kinds.len());
        let kind = match self.cfg.kinds[k].as_str() {
            "500" => FaultKind::E500,
            "503" => FaultKind::E503,
            "408" => FaultKind::E408,
            "reset" => FaultKind::Reset,
            "slow" => FaultKind::Slow(self.cfg.slow_ms.unwrap_or(300)),
            "truncate" => FaultKind::Truncate,
            _ => return None,
        };
        Some(kind)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultKind {
    E500,
    E503,
    E408,
    Reset,
    Slow(u64),
    Truncate,
}

/// The part of an injected fault that comes before the request is
/// processed: a reset drops the connection (`Err`), an error status is
/// answered instead of the request (`Some`), a slow fault waits.
pub(crate) async fn fault_before(fault: Option<FaultKind>) -> Result<Option<ApiError>, io::Error> {
    match fault {
        Some(FaultKind::Reset) => Err(io::Error::other("injected reset")),
        Some(FaultKind::E500) => Ok(Some(ApiError::internal())),
        Some(FaultKind::E503) => Ok(Some(
            ApiError::new(
                503,
                "ServerBusy",
                "The server is currently unable to receive requests. Please retry your request.",
            )
            .header("retry-after", "1"),
        )),
        Some(FaultKind::E408) => Ok(Some(ApiError::new(
            408,
            "RequestTimeout",
            "The server timed out waiting for the request.",
        ))),
        Some(FaultKind::Slow(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// The truncate fault: the response keeps its Content-Length but delivers
/// half the body, then the connection drops. A response without a body has
/// nothing to cut: the connection drops at once.
pub(crate) fn truncated(
    resp: Response<RespBody>,
    head: bool,
) -> Result<Response<RespBody>, io::Error> {
    let len = if head { None } else { content_length(&resp) };
    match len {
        Some(n) if n > 0 => {
            let (p, b) = resp.into_parts();
            Ok(Response::from_parts(p, Truncate::new(b, n / 2, n).boxed()))
        }
        _ => Err(io::Error::other("injected reset (truncate without body)")),
    }
}

/// How long a truncated response waits, after its last partial frame, before it fails
/// (which makes hyper drop the connection). hyper flushes what it has buffered while
/// the body is pending; failing at once would drop the status line, the headers and
/// the partial data with the connection.
const TRUNCATE_LINGER: Duration = Duration::from_millis(100);

/// A body that delivers `remaining` bytes, then (after [`TRUNCATE_LINGER`]) fails,
/// which closes the connection: the client sees the full Content-Length, a partial
/// body and a connection that ends early.
struct Truncate {
    inner: RespBody,
    remaining: u64,
    total: u64,
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Truncate {
    fn new(inner: RespBody, remaining: u64, total: u64) -> Truncate {
        Truncate {
            inner,
            remaining,
            total,
            linger: None,
        }
    }

    /// Pending until the linger timer fires, then the injected error.
    fn poll_fail(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let t = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(TRUNCATE_LINGER)));
        match t.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::other("injected truncation")))),
        }
    }
}

impl Body for Truncate {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return this.poll_fail(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(mut d) => {
                    if d.len() as u64 > this.remaining {
                        d.truncate(this.remaining as usize);
                    }
                    this.remaining -= d.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Err(f) => Poll::Ready(Some(Ok(f))),
            },
            Poll::Ready(None) => {
                this.remaining = 0;
                this.poll_fail(cx)
            }
            other => other,
        }
    }
    fn is_end_stream(&self) -> bool {
        false
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total)
    }
}
