//! The future hyper runs for one request, kept small on purpose.
//!
//! hyper holds the future a service returns for as long as its request runs, in an allocation
//! it keeps for the whole connection. A root holds one such request per child that long-polls
//! its change feed, so that future is two boxes in turn: the handler ([`Api::handle`], whose
//! state is as large as its largest route), then, for a request that waits, the small future
//! that makes its answer ([`Answer::Later`]). The handler's box is freed before the wait starts.
//! A panic in either step becomes a 500 with OCI error JSON; every answer is counted in the
//! metrics and tracked by the connection's [`Activity`].

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use hyper::{Method, Response};

use super::idle::{Activity, Handling, Tracked};
use crate::api::response::{internal_error_response, Body};
use crate::api::{Answer, Api, Later};
use crate::metrics::RouteLabel;

type Handler = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// One request being answered (see the module documentation).
pub(super) struct Answering {
    step: Step,
    api: Arc<Api>,
    activity: Arc<Activity>,
    /// Held until the answer is made: the connection is not idle while a handler runs.
    handling: Option<Handling>,
    method: Method,
    route: RouteLabel,
    started: Instant,
}

enum Step {
    Handling(Handler),
    Waiting(Later),
    Answered,
}

impl Answering {
    pub(super) fn new(
        api: Arc<Api>,
        activity: Arc<Activity>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Answering {
        let (method, route) = (
            req.method().clone(),
            crate::api::route_label(req.uri().path()),
        );
        let handler = Box::pin(api.clone().handle(req));
        Answering::with_handler(api, activity, method, route, handler)
    }

    fn with_handler(
        api: Arc<Api>,
        activity: Arc<Activity>,
        method: Method,
        route: RouteLabel,
        handler: Handler,
    ) -> Answering {
        Answering {
            handling: Some(activity.handling()),
            step: Step::Handling(handler),
            api,
            activity,
            method,
            route,
            started: Instant::now(),
        }
    }

    /// The answer, counted and tracked; `None` when a step panicked.
    fn finish(&mut self, response: Option<Response<Body>>) -> Response<Tracked<Body>> {
        let response = response.unwrap_or_else(|| {
            tracing::error!("request handler panicked");
            internal_error_response()
        });
        self.step = Step::Answered;
        self.handling = None;
        let metrics = self.api.metrics();
        let status = response.status();
        metrics.observe(self.route, &self.method, status, self.started.elapsed());
        response.map(|body| self.activity.track(body, metrics.sent_bytes()))
    }
}

/// Poll `future`, a panic in it as `Err`.
fn poll_caught<T>(
    future: &mut Pin<Box<dyn Future<Output = T> + Send>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, ()>> {
    match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
        Err(_) => Poll::Ready(Err(())),
    }
}

impl Future for Answering {
    type Output = Result<Response<Tracked<Body>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            let response = match &mut this.step {
                Step::Handling(handler) => match ready!(poll_caught(handler, cx)) {
                    Ok(Answer::Now(response)) => Some(response),
                    Ok(Answer::Later(waiting)) => {
                        // Frees the handler's state before the wait is first polled.
                        this.step = Step::Waiting(waiting);
                        continue;
                    }
                    Err(()) => None,
                },
                Step::Waiting(waiting) => ready!(poll_caught(waiting, cx)).ok(),
                Step::Answered => panic!("an answered request was polled again"),
            };
            return Poll::Ready(Ok(this.finish(response)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;
    use hyper::StatusCode;

    use super::*;
    use crate::status::{Status, StatusHandle};
    use crate::store::Store;

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn answering(handler: Handler) -> (Answering, Arc<Activity>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let api = Arc::new(Api::new(store, StatusHandle::new(Status::default())));
        let activity = Activity::new();
        let route = crate::api::route_label("/acr/connected-registry/v1/changes");
        let answering = Answering::with_handler(api, activity.clone(), Method::GET, route, handler);
        (answering, activity, dir)
    }

    async fn body_text(response: Response<Tracked<Body>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_waiting_request_frees_its_handler_before_the_wait_and_answers_from_it() {
        let handler_dropped = Arc::new(AtomicBool::new(false));
        let (held, seen) = (DropFlag(handler_dropped.clone()), handler_dropped.clone());
        let handler: Handler = Box::pin(async move {
            let _held_by_the_handler = held;
            Answer::Later(Box::pin(async move {
                assert!(
                    seen.load(Ordering::SeqCst),
                    "the handler's state was still held when the wait started"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let reply = crate::api::response::Reply::new(StatusCode::OK);
                reply.bytes("text/plain", "waited").build()
            }))
        });
        let (answering, activity, _dir) = answering(handler);
        let response = answering.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(handler_dropped.load(Ordering::SeqCst));
        assert_eq!(body_text(response).await, "waited");
        // The request is no longer running: the connection can go idle.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            activity.until_idle(std::time::Duration::ZERO),
        )
        .await
        .expect("the answered request still counts as running");
    }

    #[tokio::test]
    async fn a_panic_in_either_step_is_answered_as_an_internal_error() {
        let panics_now: Handler = Box::pin(async { panic!("in the handler") });
        let panics_later: Handler =
            Box::pin(async { Answer::Later(Box::pin(async { panic!("in the wait") })) });
        for handler in [panics_now, panics_later] {
            let (answering, _activity, _dir) = answering(handler);
            let response = answering.await.unwrap();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            let body = body_text(response).await;
            assert!(body.contains("\"UNKNOWN\""), "{body}");
        }
    }
}
