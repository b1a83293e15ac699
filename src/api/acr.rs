//! The node-to-node endpoints under `/acr/connected-registry/v1/` (DESIGN.md, "Node-to-node
//! API"): the change feed children follow (a long-poll, or the same request upgraded to a
//! stream in [`super::feed_stream`]), and this node's own status.
//!
//! Only `/v2/…` and `/acr/…` pass the IoT Edge API proxy, which is why these live here and not
//! on a separate port. A waiting long-poll holds no thread (it awaits the store's change watch)
//! and returns as soon as the server starts stopping, so it never delays a graceful shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;

use super::access::{check, Need};
use super::response::Reply;
use super::{children, feed_stream};
use super::{query_value, Api, ConnectionSlot};
use crate::auth::{Identity, Principal};
use crate::config::{GatewayAction, RepositoryAction};
use crate::oci::{Error, ErrorCode, Result};
use crate::store::{EventPage, LoggedEvent, Store};

pub const PREFIX: &str = "/acr/connected-registry/v1/";

/// The longest a change-feed request waits for an event.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Events per change-feed page (a page also stops at the store's byte bound,
/// `CHANGES_PAGE_BYTES`, 1 MiB).
pub const PAGE_LIMIT: usize = 1000;

/// The message TTLs (seconds) a child may give: 1 s up to the 90 days of the longest
/// `messageTtl` a configuration accepts.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=90 * 24 * 60 * 60;

/// The endpoints this module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcrRoute<'a> {
    Changes,
    Status,
    /// `GET registries`: the children.
    Registries,
    Activate(&'a str),
    Deactivate(&'a str),
    ChildStatus(&'a str),
}

impl<'a> AcrRoute<'a> {
    /// The route for `path`, or `None` when the path is not one of these endpoints (other
    /// `/acr/…` endpoints are routed elsewhere).
    pub(crate) fn parse(path: &'a str) -> Option<AcrRoute<'a>> {
        let rest = path.strip_prefix(PREFIX)?.trim_end_matches('/');
        match rest {
            "changes" => return Some(AcrRoute::Changes),
            "status" => return Some(AcrRoute::Status),
            "registries" => return Some(AcrRoute::Registries),
            _ => {}
        }
        let (name, action) = rest.strip_prefix("registries/")?.split_once('/')?;
        match action {
            "activate" => Some(AcrRoute::Activate(name)),
            "deactivate" => Some(AcrRoute::Deactivate(name)),
            "status" => Some(AcrRoute::ChildStatus(name)),
            _ => None,
        }
    }

    /// The one method each endpoint answers.
    fn method(self) -> Method {
        match self {
            AcrRoute::Changes | AcrRoute::Status | AcrRoute::Registries => Method::GET,
            AcrRoute::Activate(_) | AcrRoute::Deactivate(_) => Method::POST,
            AcrRoute::ChildStatus(_) => Method::PUT,
        }
    }
}

/// Answer a request for one of these endpoints.
pub(super) async fn handle(
    api: &Api,
    identity: &Identity,
    route: AcrRoute<'_>,
    req: Request<Incoming>,
) -> Result<Reply> {
    let method = req.method();
    if *method != route.method() {
        return Err(Error::new(
            ErrorCode::MethodNotAllowed,
            format!("method {method} is not supported on {}", req.uri().path()),
        ));
    }
    match route {
        AcrRoute::Changes => {
            // A child reads the feed with its sync token's gateway message/read; it sees
            // only events of repositories the token may read.
            let child = match &identity.principal {
                Principal::Token(t) => t.gateways(GatewayAction::MessageRead).next().unwrap_or("*"),
                Principal::Anonymous(_) => "*",
            };
            check(identity, &Need::Gateway(child, GatewayAction::MessageRead))?;
            let mut req = req;
            let slot = req.extensions().get::<ConnectionSlot>().cloned();
            let seat = slot.as_ref().map(ConnectionSlot::seat);
            let stream = feed_stream::wanted(&req).then(|| feed_stream::Opening {
                upgrade: hyper::upgrade::on(&mut req),
                slot,
            });
            let query = super::query(&req);
            // The request (headers, and the connection's read buffer they point into) is not
            // kept while the long-poll waits.
            drop(req);
            match stream {
                Some(opening) => Box::pin(feed_stream::open(api, identity, &query, opening)).await,
                None => changes(api, identity, &query, seat),
            }
        }
        AcrRoute::Status => {
            check(identity, &Need::Authenticated)?;
            Box::pin(status(api)).await
        }
        AcrRoute::Registries => {
            check(identity, &Need::Authenticated)?;
            children::list(api, identity)
        }
        AcrRoute::Activate(name) => Box::pin(children::activate(api, identity, name, req)).await,
        AcrRoute::Deactivate(name) => {
            Box::pin(children::deactivate(api, identity, name, req)).await
        }
        AcrRoute::ChildStatus(name) => {
            Box::pin(children::put_status(api, identity, name, req)).await
        }
    }
}

/// The bytes of a page, made once for every child that gets the same events. After a push
/// thousands of children ask from the same place and the store hands all of them the same
/// `events`; at 100 pushes a second a page holds tens of events, each rendered again for every
/// child otherwise (BENCHMARKS.md, "Long-polls woken in turn"). One for long-poll bodies, one
/// for stream lines.
pub(super) struct SharedPage {
    /// The events the last shared page was made from, and its bytes.
    last: Mutex<Option<(EventPage, Bytes)>>,
}

impl SharedPage {
    pub(super) const fn new() -> SharedPage {
        SharedPage {
            last: Mutex::new(None),
        }
    }

    /// `page` (made from `events`) as `render` makes it: shared when the page holds all of
    /// `events`, made for this child alone when its token left some out.
    pub(super) fn bytes(
        &self,
        page: &ChangesPage<'_>,
        events: &EventPage,
        render: fn(&ChangesPage<'_>) -> Vec<u8>,
    ) -> Bytes {
        if events.is_empty() || !page.holds_all(events.len()) {
            return render(page).into();
        }
        // Only a cache: a panic while it was held left nothing that matters.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match last.as_ref() {
            // The same events make the same page: `next` is the last one's sequence number.
            // (The cached `Arc` keeps its address from being reused.)
            Some((made_from, bytes)) if Arc::ptr_eq(made_from, events) => bytes.clone(),
            _ => {
                let made = Bytes::from(render(page));
                *last = Some((events.clone(), made.clone()));
                made
            }
        }
    }
}

/// One page of the change feed, as a long-poll answers it and a stream writes it.
#[derive(Serialize)]
pub(super) struct ChangesPage<'a> {
    /// Each event's JSON as the store keeps it: a page is rendered by copying them.
    events: Vec<&'a RawValue>,
    pub(super) next: u64,
}

impl ChangesPage<'_> {
    /// Whether the page holds all `count` events it was made from (none filtered out).
    pub(super) fn holds_all(&self, count: usize) -> bool {
        self.events.len() == count
    }
}

/// The query of a change-feed request: `since` (any cursor) and the child's message `ttl`
/// (in [`TTL_RANGE`]), refused with a 400 naming the parameter when out of range.
pub(super) fn feed_position(q: &[(String, String)]) -> Result<(u64, Option<u64>)> {
    Ok((
        number(q, "since", 0..=u64::MAX)?.unwrap_or(0),
        number(q, "ttl", TTL_RANGE)?,
    ))
}

/// `GET …/changes?since=SEQ&wait=SECONDS&ttl=SECONDS`. Every number is checked against its
/// range before it is used: `since` is any cursor, `wait` is capped at [`MAX_WAIT`], `ttl` must
/// lie in [`TTL_RANGE`]. The wait is a [`Reply::after`]: a root holds one per child that
/// long-polls, so it keeps only what the page needs (BENCHMARKS.md, "A root with many
/// children").
fn changes(
    api: &Api,
    identity: &Identity,
    q: &[(String, String)],
    seat: Option<u64>,
) -> Result<Reply> {
    let (since, ttl) = feed_position(q)?;
    let wait = number(q, "wait", 0..=u64::MAX)?.unwrap_or(0);
    let wait = Duration::from_secs(wait.min(MAX_WAIT.as_secs()));
    let mut stopping = api.stopping.subscribe();
    let (store, identity) = (api.store.clone(), identity.clone());
    Ok(Reply::after(async move {
        let events = tokio::select! {
            page = store.wait_for_changes_in_turn(seat, since, wait, PAGE_LIMIT) => page?,
            // The server is stopping: answer now with what there is (nothing new).
            _ = stopping.wait_for(|stop| *stop) => Arc::from([]),
        };
        let page = page_for(&store, &identity, since, ttl, &events)?;
        static BODIES: SharedPage = SharedPage::new();
        let body = BODIES.bytes(&page, &events, |page| {
            serde_json::to_vec(page).expect("pages serialise")
        });
        Ok(Reply::new(StatusCode::OK).bytes("application/json", body))
    }))
}

/// The page `identity` gets of `events` (those after `since`): only the repositories it may
/// read, or 410 `MESSAGES_EXPIRED` when the first event is older than the child's `ttl`.
pub(super) fn page_for<'e>(
    store: &Store,
    identity: &Identity,
    since: u64,
    ttl: Option<u64>,
    events: &'e [Arc<LoggedEvent>],
) -> Result<ChangesPage<'e>> {
    // A child that has missed events older than its message TTL must reconcile in full, as
    // if the parent had kept events only that long for it.
    if let (Some(ttl), Some(first)) = (ttl, events.first().map(|e| &e.event)) {
        // In range, so neither conversion nor subtraction can overflow.
        let ttl_delta = chrono::Duration::seconds(ttl as i64);
        if chrono::Utc::now()
            .checked_sub_signed(ttl_delta)
            .is_some_and(|oldest| first.time < oldest)
        {
            return Err(Error::new(
                ErrorCode::MessagesExpired,
                format!(
                    "change events after {since} are older than the child's message TTL ({ttl}s); reconcile in full"
                ),
            )
            .with_detail(serde_json::json!({
                "since": since,
                "latest": *store.watch_changes().borrow(),
            })));
        }
    }
    let next = events.last().map_or(since, |e| e.event.seq);
    let events = events
        .iter()
        .filter(|e| identity.holds(&e.event.repository, RepositoryAction::ContentRead))
        .map(|e| &*e.json)
        .collect();
    Ok(ChangesPage { events, next })
}

/// `GET …/status`: the status model, with the store's storage figures as of now.
async fn status(api: &Api) -> Result<Reply> {
    let (used, available) = api.storage();
    api.status.update(|s| {
        s.storage.used_bytes = used;
        if let Some(available) = available {
            s.storage.available_bytes = available;
        }
    });
    Ok(Reply::new(StatusCode::OK).json(&api.status.snapshot()))
}

/// The integer query parameter `key`, if given, refused with a 400 naming it and its range
/// unless it is an integer within `range`.
pub(crate) fn number(
    q: &[(String, String)],
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>> {
    query_value(q, key)
        .map(|v| match v.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "{key}={v:?} must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        })
        .transpose()
}

impl Api {
    /// Make every waiting (and future) change-feed long-poll answer at once; called when the
    /// server starts stopping so graceful shutdown is not held up by idle children.
    pub fn stop_long_polls(&self) {
        self.stopping.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/changes"),
            Some(AcrRoute::Changes)
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/status/"),
            Some(AcrRoute::Status)
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries"),
            Some(AcrRoute::Registries)
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries/factorya/activate"),
            Some(AcrRoute::Activate("factorya"))
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries/factorya/status"),
            Some(AcrRoute::ChildStatus("factorya"))
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries/a/b/c"),
            None
        );
        assert_eq!(AcrRoute::parse("/acr/oauth2/token"), None);
        assert_eq!(AcrRoute::parse("/v2/changes"), None);
    }
}
