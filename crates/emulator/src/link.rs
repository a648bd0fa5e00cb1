//! A slow network between the emulator and its clients (`--bandwidth`,
//! `--latency`), for Azure-like benchmarks on loopback: every blob request
//! waits the added latency before it is answered, and every response body
//! crosses one shared link of the given bandwidth, frame by frame, as the
//! downloads of a WAN link share its capacity. Admin requests are exempt.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::http::RespBody;

/// The shared link: when its next byte is free to go.
pub struct Link {
    bytes_per_sec: f64,
    next_free: Mutex<Instant>,
}

impl Link {
    /// `mb_per_sec`: megabytes (10⁶ bytes) per second.
    pub fn new(mb_per_sec: f64) -> Arc<Link> {
        Arc::new(Link {
            bytes_per_sec: mb_per_sec * 1e6,
            next_free: Mutex::new(Instant::now()),
        })
    }

    /// Reserve the link for `n` bytes after what is already queued on it;
    /// returns when they have crossed it.
    fn reserve(&self, n: usize) -> Instant {
        let mut next = self.next_free.lock().unwrap();
        let start = (*next).max(Instant::now());
        *next = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
        *next
    }

    /// `body`, delivered at the link's pace.
    pub fn throttle(self: &Arc<Self>, body: RespBody) -> RespBody {
        http_body_util::BodyExt::boxed(Throttled {
            inner: body,
            link: self.clone(),
            held: None,
        })
    }
}

/// A body whose each data frame is released when it has crossed the link.
struct Throttled {
    inner: RespBody,
    link: Arc<Link>,
    /// A frame on the link, and when it arrives.
    held: Option<(Frame<Bytes>, Pin<Box<Sleep>>)>,
}

impl Body for Throttled {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some((_, sleep)) = &mut this.held {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let (frame, _) = this.held.take().unwrap();
                return Poll::Ready(Some(Ok(frame)));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, Bytes::len);
                    if n == 0 {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    let done = this.link.reserve(n);
                    this.held = Some((frame, Box::pin(tokio::time::sleep_until(done))));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// 1 MB through a 10 MB/s link takes 0.1 s, and two bodies sharing the
    /// link take twice as long as one. The clock is tokio's paused test
    /// clock, which only advances to the next timer: the figures are exact,
    /// whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn bodies_share_the_links_bandwidth() {
        let link = Link::new(10.0);
        let body = || {
            let frames: Vec<Result<Frame<Bytes>, io::Error>> = (0..4)
                .map(|_| Ok(Frame::data(Bytes::from(vec![7u8; 250_000]))))
                .collect();
            http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed()
        };
        let t0 = Instant::now();
        let got = link.throttle(body()).collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 1_000_000);
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        let t1 = Instant::now();
        let (a, b) = tokio::join!(
            link.throttle(body()).collect(),
            link.throttle(body()).collect()
        );
        assert_eq!(
            a.unwrap().to_bytes().len() + b.unwrap().to_bytes().len(),
            2_000_000
        );
        assert_eq!(t1.elapsed(), Duration::from_millis(200));
    }
}
