//! The retry policy: every attempt of an operation has a timeout; failed attempts are retried
//! with exponential backoff (200 ms doubling to 10 s, with jitter) until a total budget is
//! spent. Answers that retrying cannot change (not found, access denied, other 4xx) are not
//! retried.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;
use tokio::time::Instant;

const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Longest cause kept in an error message (S3 error bodies can be long).
const MAX_CAUSE: usize = 400;

/// Timeouts and budget for one backend.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    /// Longest one attempt may take.
    pub request_timeout: Duration,
    /// No new attempt starts once this much time has passed since the first one, so an
    /// operation takes at most about `budget + request_timeout`.
    pub budget: Duration,
}

/// Why an operation failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// An answer retrying cannot change.
    Permanent(object_store::Error),
    /// The budget is spent.
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// Time since the first attempt started.
        elapsed: Duration,
        /// The last attempt's failure, on one line.
        last: String,
    },
}

/// Runs `attempt` until it succeeds, fails permanently or the budget is spent. `what` names
/// the operation in the warnings logged before each retry.
pub(crate) async fn run<T, F, Fut>(policy: Policy, what: &str, mut attempt: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        match once(policy, attempt()).await? {
            Ok(v) => return Ok(v),
            Err(last) => backoff.failed(what, last).await?,
        }
    }
}

/// Runs a paged operation (a listing) and collects its items. `page` is called with the token
/// of the page to fetch (`None` for the first) and returns that page's items and the next
/// page's token (`None` after the last). Each page is one attempt with its own timeout; a
/// failed page is retried as [`run`] retries, and the budget counts from the last page
/// received: a long listing over a slow link completes as long as each page comes in time.
pub(crate) async fn pages<T, F, Fut>(
    policy: Policy,
    what: &str,
    mut page: F,
) -> Result<Vec<T>, Failure>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = object_store::Result<(Vec<T>, Option<String>)>>,
{
    let (mut all, mut token, mut backoff) = (Vec::new(), None, Backoff::new(policy));
    loop {
        match once(policy, page(token.clone())).await? {
            Ok((items, next)) => {
                all.extend(items);
                match next {
                    None => return Ok(all),
                    Some(next) => token = Some(next),
                }
                backoff = Backoff::new(policy);
            }
            Err(last) => backoff.failed(what, last).await?,
        }
    }
}

/// One attempt within the request timeout: its value, or (inner `Err`) why it failed when
/// retrying may help; an answer retrying cannot change ends the operation (outer `Err`).
async fn once<T>(
    policy: Policy,
    attempt: impl Future<Output = object_store::Result<T>>,
) -> Result<Result<T, String>, Failure> {
    match tokio::time::timeout(policy.request_timeout, attempt).await {
        Ok(Ok(v)) => Ok(Ok(v)),
        Ok(Err(e)) if !retryable(&e) => Err(Failure::Permanent(e)),
        Ok(Err(e)) => Ok(Err(cause(&e))),
        Err(_) => Ok(Err(format!(
            "no answer within {:?}",
            policy.request_timeout
        ))),
    }
}

/// The retries of one operation (of one page, for a paged one): attempts failed so far, the
/// next pause, and when the budget started counting.
struct Backoff {
    policy: Policy,
    start: Instant,
    delay: Duration,
    attempts: u32,
}

impl Backoff {
    fn new(policy: Policy) -> Backoff {
        Backoff {
            policy,
            start: Instant::now(),
            delay: FIRST_DELAY,
            attempts: 0,
        }
    }

    /// Counts a failed attempt (`last` says why) and pauses before the next one, or says the
    /// budget is spent.
    async fn failed(&mut self, what: &str, last: String) -> Result<(), Failure> {
        self.attempts += 1;
        let pause = jitter(self.delay);
        let elapsed = self.start.elapsed();
        if elapsed + pause >= self.policy.budget {
            return Err(Failure::Exhausted {
                attempts: self.attempts,
                elapsed,
                last,
            });
        }
        let attempts = self.attempts;
        tracing::warn!("{what}: attempt {attempts} failed ({last}); retrying in {pause:.1?}");
        tokio::time::sleep(pause).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
        Ok(())
    }
}

/// Whether retrying `e` may help: transport failures, timeouts, 5xx, 408 and 429 (and
/// anything without an HTTP status, such as a response cut short) may; not found, access
/// denied and other 4xx answers never do.
pub(crate) fn retryable(e: &object_store::Error) -> bool {
    match e {
        object_store::Error::Generic { .. } => {
            status_in(&e.to_string()).is_none_or(|s| s >= 500 || s == 408 || s == 429)
        }
        _ => false,
    }
}

/// The HTTP status in object_store's message for a non-2xx answer
/// ("... Server returned non-2xx status code: 416 Range Not Satisfiable: ...").
fn status_in(message: &str) -> Option<u16> {
    let (_, rest) = message.split_once("status code: ")?;
    rest.get(..3)?.parse().ok()
}

/// `e` and its sources (those that add something), on one line.
pub(crate) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    one_line(&text)
}

/// `s` on one line, whitespace runs collapsed, cut to [`MAX_CAUSE`] characters.
fn one_line(s: &str) -> String {
    let mut out = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = out.char_indices().nth(MAX_CAUSE) {
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// `d` scaled by a random factor in [0.5, 1.0], so clients that failed together spread out.
fn jitter(d: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d.mul_f64(0.5 + (random % 1024) as f64 / 2046.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: msg.into(),
        }
    }

    #[test]
    fn classifies_failures() {
        let status = |s: &str| {
            generic(&format!(
                "Error performing GET http://127.0.0.1:3900/b/k in 2ms - Server returned non-2xx status code: {s}: <Error/>"
            ))
        };
        assert!(retryable(&status("503 Service Unavailable")));
        assert!(retryable(&status("500 Internal Server Error")));
        assert!(retryable(&status("429 Too Many Requests")));
        assert!(!retryable(&status("416 Range Not Satisfiable")));
        assert!(!retryable(&status("400 Bad Request")));
        assert!(retryable(&generic(
            "error sending request: connection refused"
        )));
        let not_found = object_store::Error::NotFound {
            path: "k".into(),
            source: "404".into(),
        };
        assert!(!retryable(&not_found));
    }

    #[test]
    fn causes_fit_on_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
        let long = one_line(&"x ".repeat(1000));
        assert_eq!(long.chars().count(), MAX_CAUSE + 1);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn stops_at_the_budget_and_not_before_a_permanent_failure() {
        let policy = Policy {
            request_timeout: Duration::from_secs(1),
            budget: Duration::from_secs(20),
        };
        let mut n = 0;
        let r: Result<(), _> = run(policy, "test", || {
            n += 1;
            async { Err(generic("connection refused")) }
        })
        .await;
        match r {
            Err(Failure::Exhausted { attempts, last, .. }) => {
                assert_eq!(attempts, n);
                assert!((5..12).contains(&attempts), "{attempts}");
                assert_eq!(last, "Generic S3 error: connection refused");
            }
            other => panic!("{other:?}"),
        }
        let mut n = 0;
        let r: Result<(), _> = run(policy, "test", || {
            n += 1;
            async { Err(generic("status code: 403 Forbidden")) }
        })
        .await;
        assert!(matches!(r, Err(Failure::Permanent(_))) && n == 1);
    }

    /// A listing longer than one request timeout and than the whole budget completes when each
    /// page comes in time; a failed page is fetched again (same token), not the listing.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_listing_is_timed_and_retried_page_by_page() {
        let policy = Policy {
            request_timeout: Duration::from_secs(1),
            budget: Duration::from_secs(5),
        };
        let mut asked = Vec::new();
        let began = Instant::now();
        let keys = pages(policy, "test", |token: Option<String>| {
            let n: u32 = token.as_deref().map_or(0, |t| t.parse().unwrap());
            asked.push(n);
            // Page 3 fails on its first two attempts; every page takes 0.9 s.
            let fails = n == 3 && asked.iter().filter(|&&a| a == 3).count() <= 2;
            async move {
                tokio::time::sleep(Duration::from_millis(900)).await;
                if fails {
                    return Err(generic("connection reset"));
                }
                let next = (n < 9).then(|| (n + 1).to_string());
                Ok((vec![n * 10, n * 10 + 1], next))
            }
        })
        .await
        .unwrap();
        assert!(began.elapsed() > policy.budget * 2, "{:?}", began.elapsed());
        assert_eq!(
            keys,
            (0..10)
                .flat_map(|n| [n * 10, n * 10 + 1])
                .collect::<Vec<_>>()
        );
        assert_eq!(asked, [0, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9]);
        let r = pages(policy, "test", |_| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok((vec![1], None))
        })
        .await;
        match r {
            Err(Failure::Exhausted { last, .. }) => assert_eq!(last, "no answer within 1s"),
            other => panic!("{other:?}"),
        }
    }
}
