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
    let start = Instant::now();
    let mut delay = FIRST_DELAY;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let last = match tokio::time::timeout(policy.request_timeout, attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if !retryable(&e) => return Err(Failure::Permanent(e)),
            Ok(Err(e)) => cause(&e),
            Err(_) => format!("no answer within {:?}", policy.request_timeout),
        };
        let pause = jitter(delay);
        let elapsed = start.elapsed();
        if elapsed + pause >= policy.budget {
            return Err(Failure::Exhausted {
                attempts,
                elapsed,
                last,
            });
        }
        tracing::warn!("{what}: attempt {attempts} failed ({last}); retrying in {pause:.1?}");
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(MAX_DELAY);
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
}
