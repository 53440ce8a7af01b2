//! Where an S3 library lives and how to reach it: `s3://BUCKET/PREFIX` and [`S3Options`]
//! (each unset option falls back to the usual `AWS_*` environment variable).

use library::{Error, Result};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A bucket and a key prefix inside it, parsed from `s3://BUCKET/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (empty: the whole bucket).
    pub prefix: String,
}

impl S3Location {
    /// Parses `s3://BUCKET` or `s3://BUCKET/PREFIX` (a trailing `/` is ignored).
    pub fn parse(url: &str) -> Result<S3Location> {
        let bad = |why: &str| Error::BadInput(format!("bad S3 location {url:?}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://BUCKET/PREFIX"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3-63 characters of a-z, 0-9, '-' and '.'",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            library::backend::check_key(prefix).map_err(|_| {
                bad("the prefix must be '/'-separated names, none empty, '.' or '..'")
            })?;
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The full `s3://` address of `key` below this location.
    pub fn url_of(&self, key: &str) -> String {
        match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => format!("s3://{}/{key}", self.bucket),
            (false, true) => format!("s3://{}/{}/", self.bucket, self.prefix),
            (false, false) => format!("s3://{}/{}/{key}", self.bucket, self.prefix),
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url_of(""))
    }
}

/// How to reach the S3 service. `None` fields fall back to the environment
/// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
///
/// It is also the `[store.s3]` table of a node's configuration (durations in whole seconds:
/// `request_timeout_secs`, `connect_timeout_secs`, `retry_budget_secs`; missing keys take
/// the defaults). `Debug` never shows the secret key.
#[derive(Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Options {
    /// Endpoint URL, e.g. `http://127.0.0.1:3900` (plain `http` only for loopback addresses,
    /// unless `allow_http`).
    /// Unset everywhere: AWS's `https://s3.REGION.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Region (Garage's default is `garage`). Unset everywhere: `us-east-1`.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Longest one attempt of a request may take, request and answer bodies included
    /// (default 30 s): a whole pack (32 MiB) must go through in it at the slowest bandwidth
    /// expected. A listing is timed page by page (1000 keys), not as a whole.
    #[serde(rename = "request_timeout_secs", with = "secs")]
    pub request_timeout: Duration,
    /// Longest a TCP (and TLS) connect may take (default 5 s).
    #[serde(rename = "connect_timeout_secs", with = "secs")]
    pub connect_timeout: Duration,
    /// How long failing attempts of one operation are retried before it fails (default
    /// 3 min: longer than the 70-90 s a partitioned Garage node can stall requests). A
    /// listing's budget counts from its last page received.
    #[serde(rename = "retry_budget_secs", with = "secs")]
    pub retry_budget: Duration,
    /// Allow plain `http` to any endpoint (a private network the operator trusts, e.g. the
    /// demo grid's bridge); default: only loopback endpoints may be plain `http`.
    pub allow_http: bool,
}

/// Durations as whole seconds in configuration files.
mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            region: None,
            access_key_id: None,
            secret_access_key: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(180),
            allow_http: false,
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry_budget", &self.retry_budget)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Options with the environment applied and checked.
pub(crate) struct Resolved {
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Whether the endpoint is plain `http` (a loopback address, or `allow_http`).
    pub http: bool,
}

fn or_env(value: &Option<String>, var: &str) -> Option<String> {
    value
        .clone()
        .or_else(|| std::env::var(var).ok())
        .filter(|v| !v.is_empty())
}

impl S3Options {
    pub(crate) fn resolve(&self) -> Result<Resolved> {
        let region = or_env(&self.region, "AWS_REGION").unwrap_or_else(|| "us-east-1".into());
        let endpoint = or_env(&self.endpoint, "AWS_ENDPOINT_URL")
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"))
            .trim_end_matches('/')
            .to_string();
        let http = match endpoint.split_once("://") {
            Some(("https", _)) => false,
            Some(("http", rest)) if self.allow_http || is_loopback(rest) => true,
            Some(("http", _)) => {
                return Err(Error::BadInput(format!(
                    "S3 endpoint {endpoint}: plain http is allowed only for loopback addresses; \
                     use https (or allow_http on a trusted private network)"
                )))
            }
            _ => {
                return Err(Error::BadInput(format!(
                    "S3 endpoint {endpoint:?}: expected an http:// or https:// URL"
                )))
            }
        };
        let key = |value: &Option<String>, var: &str| {
            or_env(value, var).ok_or_else(|| {
                Error::BadInput(format!(
                    "no S3 credentials for {endpoint}: set {var} (or pass it in the options)"
                ))
            })
        };
        Ok(Resolved {
            access_key_id: key(&self.access_key_id, "AWS_ACCESS_KEY_ID")?,
            secret_access_key: key(&self.secret_access_key, "AWS_SECRET_ACCESS_KEY")?,
            endpoint,
            region,
            http,
        })
    }
}

/// Whether the authority at the start of `rest` (`host[:port][/...]`) is a loopback address.
fn is_loopback(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let l = S3Location::parse("s3://spawngrid/a/b/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("spawngrid", "a/b"));
        assert_eq!(l.url_of("config"), "s3://spawngrid/a/b/config");
        assert_eq!(l.to_string(), "s3://spawngrid/a/b/");
        let l = S3Location::parse("s3://spawngrid").unwrap();
        assert_eq!(l.prefix, "");
        assert_eq!(l.url_of("config"), "s3://spawngrid/config");
        for bad in [
            "spawngrid",
            "s3://",
            "s3://Bad",
            "s3://b/../x",
            "s3://bk/a//b",
            "s3://x",
        ] {
            assert!(S3Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn http_only_for_loopback() {
        let with = |endpoint: &str| S3Options {
            endpoint: Some(endpoint.into()),
            region: Some("garage".into()),
            access_key_id: Some("GK1".into()),
            secret_access_key: Some("s3cr3t".into()),
            ..S3Options::default()
        };
        for ok in [
            "http://127.0.0.1:3900",
            "http://localhost:3900/",
            "http://[::1]:3900",
        ] {
            assert!(with(ok).resolve().unwrap().http, "{ok}");
        }
        assert!(!with("https://s3.example.org").resolve().unwrap().http);
        for bad in [
            "http://10.0.0.1:3900",
            "http://example.org",
            "ftp://x",
            "127.0.0.1",
        ] {
            assert!(with(bad).resolve().is_err(), "{bad}");
        }
        let trusted = S3Options {
            allow_http: true,
            ..with("http://10.231.0.1:3960")
        };
        assert!(trusted.resolve().unwrap().http);
    }

    #[test]
    fn debug_hides_the_secret() {
        let o = S3Options {
            secret_access_key: Some("s3cr3t".into()),
            ..S3Options::default()
        };
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("s3cr3t") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
