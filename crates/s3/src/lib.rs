//! The Spawngrid library on S3: [`S3Backend`], a [`library::Backend`] on an S3-compatible
//! object store (Garage is the reference), built on the `object_store` crate.
//!
//! - Addressing is path-style against a configurable endpoint (`http` only for loopback);
//!   keys live below `s3://BUCKET/PREFIX` ([`S3Location`], [`S3Options`]).
//! - Each `put` is one whole-object PUT (no multipart), so an object is all there or absent.
//! - Bodies are not signed (`UNSIGNED-PAYLOAD`: the signature covers the request's headers,
//!   not a SHA-256 of its body, which cost both sides a hash of every byte); instead each PUT
//!   carries an `x-amz-checksum-crc64nvme` the store verifies before it keeps the object, so
//!   a body damaged in transit is refused, not stored. No `Content-MD5` is sent. What is
//!   stored is checked again when read: a pack is named by its BLAKE3 and every object in
//!   it is re-hashed (BLAKE3) on every read.
//! - The S3 store is used only as what the library needs: content-named, write-once objects
//!   (packs), plus the `config` and lease keys written with plain overwrites. No conditional
//!   PUT (`If-None-Match`/`If-Match`) is ever sent and nothing relies on one: Garage ignores
//!   them, so S3 is never a lock.
//! - Every attempt has a timeout; failures are retried with exponential backoff within a total
//!   budget (see [`S3Options`]); a listing is timed and retried page by page, resuming at the
//!   page that failed, so a big bucket lists over a slow link; past it the call fails with one line naming the operation,
//!   the key, the endpoint, the last cause and what to do. A missing key is not retried and is
//!   reported as the library's not-found error ([`library::Error::is_not_found`]).
//! - The trait is blocking; requests run on the backend's own small tokio runtime, so it can be
//!   called from any thread, including inside another tokio runtime.
//!
//! TLS is rustls on ring: opening a backend installs ring as rustls's process-wide provider
//! unless one is installed already.

mod bridge;
mod config;
mod retry;

pub use config::{S3Location, S3Options};

use bridge::Bridge;
use bytes::Bytes;
use library::{Backend, Error, Result};
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStoreExt, PutPayload, RetryConfig};
use retry::{Failure, Policy};
use std::future::Future;
use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

type Store = Arc<PrefixStore<AmazonS3>>;

/// A library backend on an S3 bucket, below a key prefix.
pub struct S3Backend {
    store: Store,
    /// The bucket without the prefix, for listings (which page through it by full keys).
    bucket: AmazonS3,
    policy: Policy,
    location: S3Location,
    endpoint: String,
    bridge: Bridge,
}

/// The backend operations, for messages.
#[derive(Clone, Copy)]
enum Op {
    Put,
    Get,
    GetRange,
    Head,
    List,
    Delete,
}

impl Op {
    /// The S3 request, as the error line names it.
    fn request(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Get | Op::GetRange => "GET",
            Op::Head => "HEAD",
            Op::List => "LIST",
            Op::Delete => "DELETE",
        }
    }

    /// What was being done, as [`Error::Io`] words it.
    fn doing(self) -> &'static str {
        match self {
            Op::Put => "writing",
            Op::Get => "reading",
            Op::GetRange => "reading a range of",
            Op::Head => "checking",
            Op::List => "listing",
            Op::Delete => "deleting",
        }
    }
}

impl S3Backend {
    /// Opens the library location `url` (`s3://BUCKET/PREFIX`) with `options`. Nothing is
    /// sent yet: a wrong endpoint or key shows on the first call.
    pub fn open(url: &str, options: &S3Options) -> Result<S3Backend> {
        let location = S3Location::parse(url)?;
        let resolved = options.resolve()?;
        // reqwest's rustls has no built-in provider here (that would be aws-lc-rs).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bridge = Bridge::new().map_err(|e| Error::io("starting the S3 runtime for", url, e))?;
        // The attempt timeout is ours (`retry`); the HTTP client's own is only a backstop.
        let client = ClientOptions::new()
            .with_timeout(options.request_timeout + Duration::from_secs(5))
            .with_connect_timeout(options.connect_timeout)
            .with_allow_http(resolved.http)
            // Plain HTTP needs no trust roots: loading the system's costs every process that
            // opens the library milliseconds (it reads and parses each file in /etc/ssl/certs).
            .with_no_system_certificates(resolved.http);
        // Retries are ours (whole operations, one budget); object_store's are turned off.
        let no_retries = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let s3 = {
            let _in_runtime = bridge.handle().enter();
            AmazonS3Builder::new()
                .with_bucket_name(&location.bucket)
                .with_region(&resolved.region)
                .with_endpoint(&resolved.endpoint)
                .with_virtual_hosted_style_request(false)
                .with_access_key_id(&resolved.access_key_id)
                .with_secret_access_key(&resolved.secret_access_key)
                .with_client_options(client)
                .with_retry(no_retries)
                // No SHA-256 of every body (on this side to sign it, on the store's to check
                // it): a CRC-64/NVME the store checks instead, far cheaper (see the module docs).
                .with_unsigned_payload(true)
                .with_checksum_algorithm(Checksum::CRC64NVME)
                .build()
                .map_err(|e| {
                    Error::BadInput(format!(
                        "S3 location {url} at {}: {}",
                        resolved.endpoint,
                        retry::cause(&e)
                    ))
                })?
        };
        Ok(S3Backend {
            store: Arc::new(PrefixStore::new(s3.clone(), location.prefix.as_str())),
            bucket: s3,
            policy: Policy {
                request_timeout: options.request_timeout,
                budget: options.retry_budget,
            },
            endpoint: resolved.endpoint,
            location,
            bridge,
        })
    }

    /// The bucket and prefix this backend stores its keys under.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// Runs one operation on `key` (with retries) on the backend's runtime and waits for it.
    fn call<T, F, Fut>(&self, op: Op, key: &str, attempt: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(Store, Path) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = object_store::Result<T>> + Send,
    {
        let (store, path) = (self.store.clone(), Path::from(key));
        self.drive(op, key, move |policy, what| async move {
            retry::run(policy, &what, || attempt(store.clone(), path.clone())).await
        })
    }

    /// Runs `work` (given the retry policy and the operation's name for warnings) on the
    /// backend's runtime, waits for it and words its failure.
    fn drive<T, W, Fut>(&self, op: Op, key: &str, work: W) -> Result<T>
    where
        T: Send + 'static,
        W: FnOnce(Policy, String) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>> + Send + 'static,
    {
        let what = format!(
            "S3 {} {} at {}",
            op.request(),
            self.location.url_of(key),
            self.endpoint
        );
        let began = std::time::Instant::now();
        let work = work(self.policy, what.clone());
        let outcome = self.bridge.run(async move {
            let out = work.await;
            tracing::trace!("{what}: {:.2} ms", began.elapsed().as_secs_f64() * 1e3);
            out
        });
        let Some(outcome) = outcome else {
            let e = std::io::Error::other(format!("S3 {} task panicked", op.request()));
            return Err(Error::io(op.doing(), self.location.url_of(key), e));
        };
        outcome.map_err(|f| self.error(op, key, f))
    }

    /// The one-line error for a failed operation.
    fn error(&self, op: Op, key: &str, failure: Failure) -> Error {
        let (req, at) = (op.request(), &self.endpoint);
        let (kind, message) = match failure {
            Failure::Permanent(object_store::Error::NotFound { .. }) => {
                (ErrorKind::NotFound, format!("no such key (S3 {req} at {at})"))
            }
            Failure::Permanent(e) => {
                let kind = match e {
                    object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. } => ErrorKind::PermissionDenied,
                    _ => ErrorKind::Other,
                };
                let cause = retry::cause(&e);
                (kind, format!("S3 {req} at {at} refused: {cause}; check the bucket, the key's permissions and the request"))
            }
            Failure::Exhausted {
                attempts,
                elapsed,
                last,
            } => (
                ErrorKind::TimedOut,
                format!(
                    "S3 {req} at {at} failed {attempts} {} in {elapsed:.1?} (retry budget {:?}); last error: {last}; \
                     check that the endpoint is reachable and its cluster healthy (has quorum), or raise the retry budget",
                    if attempts == 1 { "time" } else { "times" },
                    self.policy.budget
                ),
            ),
        };
        Error::io(
            op.doing(),
            self.location.url_of(key),
            std::io::Error::new(kind, message),
        )
    }

    fn checked(&self, key: &str) -> Result<()> {
        library::backend::check_key(key)
    }
}

impl Backend for S3Backend {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put_bytes(key, Bytes::copy_from_slice(data))
    }

    fn put_bytes(&self, key: &str, data: Bytes) -> Result<()> {
        self.checked(key)?;
        // Retries send the same bytes again: the payload shares them, it does not copy.
        let payload = PutPayload::from(data);
        self.call(Op::Put, key, move |s, p| {
            let payload = payload.clone();
            async move { s.put(&p, payload).await.map(drop) }
        })
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.checked(key)?;
        self.call(Op::Get, key, |s, p| async move {
            Ok(Vec::from(s.get(&p).await?.bytes().await?))
        })
    }

    fn get_range(&self, key: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.checked(key)?;
        if len == 0 {
            // S3 has no empty ranges; an empty read only needs the key to exist.
            return self
                .call(
                    Op::Head,
                    key,
                    |s, p| async move { s.head(&p).await.map(drop) },
                )
                .map(|()| Vec::new());
        }
        let end = offset + len as u64;
        tracing::trace!("S3 range {offset}..{end} of {key}");
        let got = self.call(Op::GetRange, key, move |s, p| async move {
            Ok(Vec::from(s.get_range(&p, offset..end).await?))
        })?;
        if got.len() != len {
            return Err(Error::io(
                Op::GetRange.doing(),
                self.location.url_of(key),
                std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    format!(
                        "range {offset}..{end} is past the end (got {} bytes)",
                        got.len()
                    ),
                ),
            ));
        }
        Ok(got)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        // Paged by hand (not `ObjectStore::list`, one stream) so each page is one attempt.
        // An S3 prefix is a plain string prefix, as the trait's is.
        let under = match self.location.prefix.as_str() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let (bucket, full) = (self.bucket.clone(), format!("{under}{prefix}"));
        let mut keys = self.drive(Op::List, prefix, move |policy, what| async move {
            retry::pages(policy, &what, |page_token| {
                let (bucket, full, under) = (bucket.clone(), full.clone(), under.clone());
                async move {
                    let options = PaginatedListOptions {
                        page_token,
                        ..PaginatedListOptions::default()
                    };
                    let page = bucket.list_paginated(Some(&full), options).await?;
                    let keys = page.result.objects.into_iter().filter_map(|meta| {
                        let key = meta.location.as_ref().strip_prefix(under.as_str())?;
                        Some((key.to_string(), meta.size))
                    });
                    Ok((keys.collect(), page.page_token))
                }
            })
            .await
        })?;
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> Result<()> {
        self.checked(key)?;
        self.call(Op::Delete, key, |s, p| async move {
            match s.delete(&p).await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                r => r,
            }
        })
    }

    fn exists(&self, key: &str) -> Result<bool> {
        self.checked(key)?;
        self.call(Op::Head, key, |s, p| async move {
            match s.head(&p).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn describe(&self) -> String {
        format!("{} at {}", self.location, self.endpoint)
    }
}
